//! `launch plot RUN_DIR... [--out FILE.png]`: one PNG of 2x2 panels (training loss, codebook
//! usage, perplexity, validation PSNR) over training steps, one colour per run.
//!
//! Each run's `metrics.jsonl` is read: training lines (no `split`) give `loss`, `used_fraction`
//! and `perplexity`; validation lines (`"split": "val"`) give `psnr`; other splits (`eval`) are
//! ignored, and so is `metrics.discarded.jsonl`. A run lacking a metric has no series in that
//! panel.
//!
//! Text is drawn with plotters' `ab_glyph` feature from a font file read at run time (no
//! fontconfig, no C library): `ROTOR_PLOT_FONT`, else the first of [`FONT_PATHS`] that exists
//! (Debian's `fonts-dejavu-core` first).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use plotters::prelude::*;
use serde_json::Value;

/// Size of the picture in pixels (each panel half of it each way).
pub const WIDTH: u32 = 1600;
/// See [`WIDTH`].
pub const HEIGHT: u32 = 1200;

/// The font files tried in turn when `ROTOR_PLOT_FONT` is not set.
const FONT_PATHS: &[&str] = &[
    // Debian / Ubuntu (fonts-dejavu-core), Fedora, Arch, others.
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/local/share/fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    // macOS, Windows.
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// The family name the font is registered under (plotters' default family).
const FAMILY: &str = "sans-serif";

/// Line colours, one per run in command-line order (matplotlib's `tab10`).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One run's series, as `(step, value)` points in file order.
#[derive(Debug, Default)]
pub struct Run {
    /// The run directory's name (in the legend).
    pub name: String,
    pub loss: Vec<(f64, f64)>,
    /// Codebook usage in percent (training lines' `used_fraction` x 100).
    pub usage: Vec<(f64, f64)>,
    pub perplexity: Vec<(f64, f64)>,
    /// Validation PSNR in dB.
    pub psnr: Vec<(f64, f64)>,
}

/// The legend name of a run directory: its last component (of the absolute path for `.`).
fn run_name(dir: &Path) -> String {
    let named = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    named(dir)
        .filter(|n| n != "..")
        .or_else(|| dir.canonicalize().ok().as_deref().and_then(named))
        .unwrap_or_else(|| dir.display().to_string())
}

/// Reads `dir/metrics.jsonl`. Blank lines are skipped, and so is an unparsable last line without
/// its newline (a line being written by a live run); any other line that is not a JSON object is
/// an error naming the file and line.
pub fn read_run(dir: &Path) -> Result<Run> {
    if !dir.is_dir() {
        bail!("run directory {} does not exist", dir.display());
    }
    let path = dir.join("metrics.jsonl");
    if !path.is_file() {
        bail!(
            "{} has no metrics.jsonl ({} not found): not a run directory, or a run that has not \
             logged yet",
            dir.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut run = Run {
        name: run_name(dir),
        ..Run::default()
    };
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let unfinished = i + 1 == lines.len();
        let record: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if unfinished => {
                eprintln!(
                    "warning: {} line {}: skipping an incomplete last line",
                    path.display(),
                    i + 1
                );
                continue;
            }
            Err(e) => bail!("{} line {}: not a JSON line: {e}", path.display(), i + 1),
        };
        let Some(record) = record.as_object() else {
            bail!("{} line {}: not a JSON object", path.display(), i + 1);
        };
        // Lines without a step are not over training steps: nothing to draw.
        let Some(step) = record.get("step").and_then(Value::as_f64) else {
            continue;
        };
        // Missing, null (a non-finite value) or non-numeric values leave no point.
        let get = |key: &str| {
            record
                .get(key)
                .and_then(Value::as_f64)
                .filter(|v| v.is_finite())
        };
        match record.get("split").and_then(Value::as_str) {
            None => {
                if let Some(v) = get("loss") {
                    run.loss.push((step, v));
                }
                if let Some(v) = get("used_fraction") {
                    run.usage.push((step, v * 100.0));
                }
                if let Some(v) = get("perplexity") {
                    run.perplexity.push((step, v));
                }
            }
            Some("val") => {
                if let Some(v) = get("psnr") {
                    run.psnr.push((step, v));
                }
            }
            Some(_) => {}
        }
    }
    Ok(run)
}

/// Registers the font under [`FAMILY`]: `ROTOR_PLOT_FONT`, else the first of [`FONT_PATHS`].
fn load_font() -> Result<()> {
    let from_env = std::env::var_os("ROTOR_PLOT_FONT").filter(|v| !v.is_empty());
    let path = match &from_env {
        Some(p) => PathBuf::from(p),
        None => FONT_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| {
                anyhow!(
                    "no font found for the plot's text (tried {}): install one (Debian/Ubuntu: \
                     `apt-get install fonts-dejavu-core`) or set ROTOR_PLOT_FONT to a .ttf/.otf file",
                    FONT_PATHS.join(", ")
                )
            })?,
    };
    let bytes = std::fs::read(&path).with_context(|| {
        let origin = if from_env.is_some() {
            " (ROTOR_PLOT_FONT)"
        } else {
            ""
        };
        format!("cannot read the font file {}{origin}", path.display())
    })?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| {
        anyhow!(
            "{} is not a TrueType/OpenType font (set ROTOR_PLOT_FONT to a .ttf or .otf file)",
            path.display()
        )
    })
}

/// One panel: what it shows and how.
struct Panel {
    title: &'static str,
    y_desc: &'static str,
    series: fn(&Run) -> &[(f64, f64)],
    /// A fixed y range (else the data's, padded).
    y_range: Option<(f64, f64)>,
    /// Dots at the points (sparse series: validation every few hundred steps).
    markers: bool,
}

const PANELS: [Panel; 4] = [
    Panel {
        title: "training loss",
        y_desc: "loss",
        series: |r| &r.loss,
        y_range: None,
        markers: false,
    },
    Panel {
        title: "codebook usage (training batches)",
        y_desc: "codes used (%)",
        series: |r| &r.usage,
        y_range: Some((0.0, 100.0)),
        markers: false,
    },
    Panel {
        title: "codebook perplexity (training batches)",
        y_desc: "perplexity",
        series: |r| &r.perplexity,
        y_range: None,
        markers: false,
    },
    Panel {
        title: "validation PSNR",
        y_desc: "PSNR (dB)",
        series: |r| &r.psnr,
        y_range: None,
        markers: true,
    },
];

/// `lo..hi` widened so that it is not empty and the extremes are off the frame.
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        (hi.abs() * 0.05).max(1e-3)
    };
    (lo - pad, hi + pad)
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
    runs: &[Run],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let points = || runs.iter().flat_map(|r| (panel.series)(r).iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let empty = x0 > x1;
    if empty {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let (x0, x1) = if x1 > x0 { (x0, x1) } else { padded(x0, x1) };
    let (y0, y1) = match panel.y_range {
        Some((lo, hi)) => padded(lo.min(y0), hi.max(y1)),
        None => padded(y0, y1),
    };
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the {}: {e}", panel.title);
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (FAMILY, 24))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(panel.y_desc)
        .x_label_formatter(&|x| format!("{}", x.round() as i64))
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .draw()
        .map_err(err)?;
    if empty {
        let grey = BLACK.mix(0.6);
        let style = TextStyle::from((FAMILY, 18)).color(&grey);
        chart
            .draw_series(std::iter::once(Text::new(
                "no data",
                (x0 + (x1 - x0) * 0.45, (y0 + y1) / 2.0),
                style,
            )))
            .map_err(err)?;
        return Ok(());
    }
    for (i, run) in runs.iter().enumerate() {
        let series = (panel.series)(run);
        if series.is_empty() {
            continue;
        }
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                series.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?;
        if panel.markers {
            chart
                .draw_series(series.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// Legend rows of `(run index, x)` for the runs' names in `style`, centred in [`WIDTH`].
fn legend_rows<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    runs: &[Run],
    style: &TextStyle,
) -> Result<Vec<Vec<(usize, i32)>>> {
    const SWATCH: i32 = 30;
    const GAP: i32 = 36;
    let max = WIDTH as i32 - 40;
    let mut rows: Vec<Vec<(usize, i32)>> = vec![];
    let mut widths: Vec<i32> = vec![];
    let mut x = 0;
    for (i, run) in runs.iter().enumerate() {
        let (w, _) = root
            .estimate_text_size(&run.name, style)
            .map_err(|e| anyhow!("laying out the legend: {e}"))?;
        let item = SWATCH + 8 + w as i32;
        if rows.is_empty() || (x > 0 && x + item > max) {
            rows.push(vec![]);
            widths.push(0);
            x = 0;
        }
        rows.last_mut().expect("a row").push((i, x));
        x += item + GAP;
        *widths.last_mut().expect("a row") = x - GAP;
    }
    for (row, w) in rows.iter_mut().zip(widths) {
        let left = (WIDTH as i32 - w) / 2;
        row.iter_mut().for_each(|(_, x)| *x += left);
    }
    Ok(rows)
}

/// Height of one legend row, and the margins above and below the legend.
const LEGEND_ROW: u32 = 28;
const LEGEND_MARGIN: u32 = 10;

/// The legend strip: a colour swatch and the run's name per run, in rows.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    runs: &[Run],
    rows: &[Vec<(usize, i32)>],
    style: &TextStyle,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing the legend: {e}");
    for (r, row) in rows.iter().enumerate() {
        let y = (LEGEND_MARGIN + r as u32 * LEGEND_ROW + LEGEND_ROW / 2) as i32;
        for &(i, x) in row {
            let color = PALETTE[i % PALETTE.len()];
            area.draw(&Rectangle::new(
                [(x, y - 2), (x + 30, y + 2)],
                color.filled(),
            ))
            .map_err(err)?;
            let (_, h) = area.estimate_text_size(&runs[i].name, style).map_err(err)?;
            area.draw(&Text::new(
                runs[i].name.as_str(),
                (x + 38, y - h as i32 / 2),
                style.clone(),
            ))
            .map_err(err)?;
        }
    }
    Ok(())
}

/// Draws the runs' panels into an RGB buffer of [`WIDTH`] x [`HEIGHT`].
pub fn render(runs: &[Run]) -> Result<Vec<u8>> {
    load_font()?;
    let mut buf = vec![0u8; WIDTH as usize * HEIGHT as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow!("drawing the plot: {e}"))?;
        let style = TextStyle::from((FAMILY, 18));
        let rows = legend_rows(&root, runs, &style)?;
        let (top, body) = root.split_vertically(2 * LEGEND_MARGIN + rows.len() as u32 * LEGEND_ROW);
        draw_legend(&top, runs, &rows, &style)?;
        for (area, panel) in body.split_evenly((2, 2)).iter().zip(&PANELS) {
            draw_panel(area, panel, runs)?;
        }
        root.present()
            .map_err(|e| anyhow!("drawing the plot: {e}"))?;
    }
    Ok(buf)
}

/// `launch plot`: reads the runs, draws them, writes the PNG, prints where.
pub fn run(dirs: &[PathBuf], out: &Path) -> Result<()> {
    let runs = dirs
        .iter()
        .map(|d| read_run(d))
        .collect::<Result<Vec<_>>>()?;
    let buf = render(&runs)?;
    let image = image::RgbImage::from_raw(WIDTH, HEIGHT, buf)
        .ok_or_else(|| anyhow!("the plot buffer has the wrong size"))?;
    image
        .save_with_format(out, image::ImageFormat::Png)
        .with_context(|| format!("cannot write {}", out.display()))?;
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    println!("wrote {} ({})", out.display(), names.join(", "));
    Ok(())
}
