//! `launch --sweep KEY=V1,V2,... CONFIG`: one run of the config per value of one key, in turn,
//! each in its own run directory (`run.name` + `-` + the value), then a table comparing their
//! final validation (codes used, perplexity, reconstruction L1, PSNR). Each run is this same
//! binary started again with `--set KEY=V --set run.name=...` and every other argument kept, so
//! a sweep of data-parallel runs (`--cpu N`) works too and each run resumes like any other.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use trainer::TrainConfig;

/// A parsed `--sweep KEY=V1,V2,...`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    /// The dotted config key.
    pub key: String,
    /// Its values, as written (TOML values or bare strings).
    pub values: Vec<String>,
}

impl Sweep {
    /// Parses `KEY=V1,V2,...`; commas inside `[...]`, `{...}` or quotes do not split.
    pub fn parse(spec: &str) -> Result<Self> {
        let Some((key, list)) = spec.split_once('=') else {
            bail!(
                "--sweep `{spec}`: expected KEY=VALUE1,VALUE2,... (e.g. model.quantizer.estimator=rotation,ste)"
            );
        };
        let key = key.trim().to_string();
        let mut values = Vec::new();
        let (mut depth, mut quote, mut cur) = (0i32, None::<char>, String::new());
        for c in list.chars() {
            match (c, quote) {
                ('"' | '\'', None) => quote = Some(c),
                (q, Some(open)) if q == open => quote = None,
                ('[' | '{', None) => depth += 1,
                (']' | '}', None) => depth -= 1,
                (',', None) if depth == 0 => {
                    values.push(std::mem::take(&mut cur).trim().to_string());
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        values.push(cur.trim().to_string());
        if key.is_empty() || values.iter().any(String::is_empty) || values.len() < 2 {
            bail!(
                "--sweep `{spec}`: give a key and at least two non-empty values, KEY=VALUE1,VALUE2"
            );
        }
        Ok(Self { key, values })
    }

    /// The run name for `value`: the config's name, `-`, the value with anything but letters,
    /// digits, `.`, `_` and `-` replaced by `_`.
    fn run_name(base: &str, value: &str) -> String {
        let v: String = value
            .trim_matches('"')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{base}-{v}")
    }
}

/// One finished run of a sweep.
struct Row {
    value: String,
    run_dir: PathBuf,
    val: Option<serde_json::Value>,
}

/// Runs the sweep: `args` are this process's arguments without `--sweep` and its value.
pub fn run(config: &Path, overrides: &[String], sweep: &Sweep, args: &[String]) -> Result<()> {
    // Every value must give a valid config before anything trains.
    let base = TrainConfig::load(config, overrides)?;
    let mut plans = Vec::new();
    for value in &sweep.values {
        let name = Sweep::run_name(&base.run.name, value);
        let mut o = overrides.to_vec();
        o.push(format!("{}={value}", sweep.key));
        o.push(format!("run.name={name}"));
        let cfg = TrainConfig::load(config, &o)
            .with_context(|| format!("--sweep {}={value}", sweep.key))?;
        plans.push((value.clone(), name, cfg.run_dir()));
    }
    let exe = std::env::current_exe().context("cannot find the launch binary to run the sweep")?;
    let mut rows = Vec::new();
    for (i, (value, name, run_dir)) in plans.into_iter().enumerate() {
        eprintln!(
            "sweep {}/{}: {} = {value} -> {}",
            i + 1,
            sweep.values.len(),
            sweep.key,
            run_dir.display()
        );
        let status = Command::new(&exe)
            .args(args)
            .arg("--set")
            .arg(format!("{}={value}", sweep.key))
            .arg("--set")
            .arg(format!("run.name={name}"))
            .status()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        if !status.success() {
            bail!(
                "sweep run {} = {value} failed ({status}); its log is in {}",
                sweep.key,
                run_dir.display()
            );
        }
        let val = last_validation(&run_dir.join("metrics.jsonl"));
        rows.push(Row {
            value,
            run_dir,
            val,
        });
    }
    println!("{}", table(&sweep.key, &rows));
    Ok(())
}

/// The last `"split": "val"` record of a metrics file.
fn last_validation(path: &Path) -> Option<serde_json::Value> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["split"] == "val")
}

fn table(key: &str, rows: &[Row]) -> String {
    let short = key.rsplit('.').next().unwrap_or(key);
    let head = [
        short,
        "step",
        "codes used",
        "perplexity",
        "rec L1",
        "PSNR dB",
        "run directory",
    ];
    let mut lines: Vec<[String; 7]> = vec![head.map(String::from)];
    for r in rows {
        let f = |k: &str| r.val.as_ref().and_then(|v| v[k].as_f64());
        let fmt = |v: Option<f64>, p: usize| v.map_or("-".into(), |v| format!("{v:.p$}"));
        lines.push([
            r.value.trim_matches('"').to_string(),
            r.val
                .as_ref()
                .and_then(|v| v["step"].as_u64())
                .map_or("-".into(), |s| s.to_string()),
            f("used_fraction").map_or("-".into(), |u| format!("{:.1}%", u * 100.0)),
            fmt(f("perplexity"), 1),
            fmt(f("l1"), 4),
            fmt(f("psnr"), 2),
            r.run_dir.display().to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!("\nvalidation after training, one row per {key}:\n");
    for (i, l) in lines.iter().enumerate() {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, w))| {
                if c == 0 || c == 6 {
                    format!("{s:<w$}")
                } else {
                    format!("{s:>w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 12));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values_and_keeps_bracketed_commas() {
        let s = Sweep::parse("model.quantizer.estimator=rotation,ste").unwrap();
        assert_eq!(s.key, "model.quantizer.estimator");
        assert_eq!(s.values, ["rotation", "ste"]);
        let s = Sweep::parse("optim.betas=[0.5,0.9], [0.9,0.99]").unwrap();
        assert_eq!(s.values, ["[0.5,0.9]", "[0.9,0.99]"]);
        assert!(Sweep::parse("optim.lr").is_err());
        assert!(
            Sweep::parse("optim.lr=1e-3").is_err(),
            "one value is not a sweep"
        );
        assert!(Sweep::parse("optim.lr=1e-3,").is_err());
        assert_eq!(Sweep::run_name("q", "[0.5, 0.9]"), "q-_0.5__0.9_");
        assert_eq!(Sweep::run_name("q", "ste"), "q-ste");
    }
}
