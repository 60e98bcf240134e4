//! `launch --cpu N`: process-level data parallelism, failure handling and signals.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

#[path = "../../models/tests/support/busy_load.rs"]
mod busy_load;
use busy_load::Load;

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_launch")
}

fn setup(dir: &Path, steps: usize, checkpoint_every: usize) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..40u32 {
        image::GrayImage::from_fn(28, 28, |x, y| {
            image::Luma([((x * (i % 5 + 1) + y * (i % 3 + 2) + i) % 256) as u8])
        })
        .save(data.join(format!("{i:03}.png")))
        .unwrap();
    }
    let cfg = dir.join("tiny.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[run]
name = "tiny"
output_dir = "{out}"
seed = 1
steps = {steps}
batch_size = 8
log_every = 1
val_batches = 1
checkpoint_every = {checkpoint_every}

[data]
source = {{ kind = "image_folder", train = "{data}", val_fraction = 0.1, channels = 1 }}
resolution = 28

[model]
kind = "peer"
in_channels = 1

[model.quantizer]
kind = "vq"
dim = 32
codebook_size = 32
estimator = "rotation"
dead_code_threshold = 0.5

[objective]
kind = "vqvae"
reconstruction = "l1"
clamp_output = true

[optim]
lr = 1e-3
"#,
            out = dir.join("runs").display(),
            data = data.display()
        ),
    )
    .unwrap();
    cfg
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("runs/tiny/metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v.get("loss").is_some())
        .collect()
}

fn start(cfg: &Path, extra: &[&str]) -> Child {
    Command::new(exe())
        .args(["--cpu", "2", "--timeout", "20"])
        .args(extra)
        .arg(cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for_steps(dir: &Path, n: usize, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while metrics(dir).len() < n {
        assert!(child.try_wait().unwrap().is_none(), "launcher exited early");
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Child processes of `pid` with their RANK.
fn workers(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let ppid: u32 = after
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if ppid == pid {
            let env = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
            let rank = env
                .split(|b| *b == 0)
                .filter_map(|kv| std::str::from_utf8(kv).ok())
                .find_map(|kv| kv.strip_prefix("RANK=").map(str::to_string))
                .unwrap_or_default();
            out.push((p, rank));
        }
    }
    out
}

/// Runs `launch ARGS CONFIG` to completion and asserts it succeeded; returns stdout + stderr.
fn run_ok(cfg: &Path, args: &[&str]) -> String {
    let out = Command::new(exe()).args(args).arg(cfg).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "launch {args:?}: {text}");
    text
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn two_cpu_workers_train_and_log_per_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), 6, 3);
    let out = Command::new(exe())
        .args(["--cpu", "2", "--timeout", "20"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("done: 6 steps"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "no ANSI escape codes when the output is not a terminal: {text:?}"
    );
    let run = tmp.path().join("runs/tiny");
    assert!(run.join("logs/rank-0.log").exists() && run.join("logs/rank-1.log").exists());
    let rank1 = std::fs::read_to_string(run.join("logs/rank-1.log")).unwrap();
    assert!(rank1.contains("rank{r=1}"), "rank-tagged lines: {rank1}");
    assert!(run.join("checkpoints/step-00000006").exists());
    assert_eq!(metrics(tmp.path()).len(), 6, "only rank 0 writes metrics");
}

#[test]
fn a_killed_worker_stops_the_group_and_names_the_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), 100_000, 100_000);
    let mut launcher = start(&cfg, &[]);
    wait_for_steps(tmp.path(), 2, &mut launcher);
    let ws = workers(launcher.id());
    assert_eq!(ws.len(), 2, "{ws:?}");
    let victim = ws.iter().find(|(_, r)| r == "1").unwrap().0;
    Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    let t = Instant::now();
    let out = launcher.wait_with_output().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "launcher took {:?}",
        t.elapsed()
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("rank 1") && text.contains("signal 9"),
        "{text}"
    );
    for (p, _) in ws {
        assert!(!alive(p), "worker {p} left behind");
    }
}

/// Steps of the runs the tests interrupt: long enough that the signal always lands mid-run
/// (a tiny step takes a few milliseconds; 24 steps once finished between the test seeing step 4
/// and its SIGTERM arriving).
const LONG_RUN: usize = 400;

/// The fields of a metrics line that describe the step's training, not its timing.
const TRAINING_FIELDS: [&str; 9] = [
    "step",
    "loss",
    "rec",
    "quant_loss",
    "q_commitment",
    "used_fraction",
    "perplexity",
    "quant_error",
    "grad_norm",
];

fn training_fields(lines: &[serde_json::Value]) -> Vec<Vec<serde_json::Value>> {
    lines
        .iter()
        .map(|l| TRAINING_FIELDS.iter().map(|k| l[*k].clone()).collect())
        .collect()
}

#[test]
fn sigterm_checkpoints_exits_zero_and_resume_matches_an_uninterrupted_run() {
    // The reference on one thread per worker, the interrupted run on four, the resumed one on
    // two, all with a busy thread beside them: the per-step figures must agree exactly.
    let _load = Load::start(1);
    let reference = tempfile::tempdir().unwrap();
    let cfg = setup(reference.path(), LONG_RUN, 1000);
    let out = Command::new(exe())
        .args(["--cpu", "2"])
        .env("RAYON_NUM_THREADS", "1")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = metrics(reference.path());

    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), LONG_RUN, 1000);
    let mut launcher = Command::new(exe())
        .args(["--cpu", "2"])
        .env("RAYON_NUM_THREADS", "4")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_steps(tmp.path(), 4, &mut launcher);
    Command::new("kill")
        .args(["-TERM", &launcher.id().to_string()])
        .status()
        .unwrap();
    let out = launcher.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "SIGTERM must end with status 0: {text}"
    );
    let stopped_at = metrics(tmp.path()).len();
    assert!(stopped_at < LONG_RUN, "stopped early: {stopped_at}");
    assert!(
        tmp.path().join("runs/tiny/checkpoints/latest").exists(),
        "{text}"
    );

    let out = Command::new(exe())
        .args(["--cpu", "2", "--resume", "auto"])
        .env("RAYON_NUM_THREADS", "2")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = metrics(tmp.path());
    assert_eq!(got.len(), LONG_RUN);
    assert!(
        !stopped_at.is_multiple_of(1000),
        "the signal landed between checkpoints (step {stopped_at})"
    );
    let (want, got) = (training_fields(&want), training_fields(&got));
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(
            w,
            g,
            "step {}: {TRAINING_FIELDS:?} of the resumed run vs the uninterrupted one \
             (stopped at {stopped_at})",
            i + 1
        );
    }
}

/// Two workers with half batches log the global batch's figures: the same as one process
/// accumulating the same two halves (`optim.accumulate = 2`).
#[test]
fn two_workers_log_the_global_batch() {
    let two = tempfile::tempdir().unwrap();
    run_ok(
        &setup(two.path(), 5, 1000),
        &["--cpu", "2", "--timeout", "20"],
    );
    let one = tempfile::tempdir().unwrap();
    run_ok(
        &setup(one.path(), 5, 1000),
        &["--set", "optim.accumulate=2"],
    );
    let (a, b) = (metrics(two.path()), metrics(one.path()));
    assert_eq!(a.len(), 5);
    assert_eq!(b.len(), 5);
    for (la, lb) in a.iter().zip(&b) {
        for key in TRAINING_FIELDS {
            let (x, y) = (la[key].as_f64().unwrap(), lb[key].as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-6 * x.abs().max(y.abs()) + 1e-12,
                "step {}: {key} is {x} with two workers, {y} with one accumulating",
                la["step"]
            );
        }
    }
    // Usage comes from the union of both halves' codes, not a mean of per-worker fractions.
    assert!(a.iter().any(|l| l["used_fraction"].as_f64().unwrap() > 0.0));
}

#[test]
fn max_restarts_restarts_the_group_from_the_latest_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), LONG_RUN, 50);
    let mut launcher = start(&cfg, &["--max-restarts", "1"]);
    wait_for_steps(tmp.path(), 60, &mut launcher);
    let ws = workers(launcher.id());
    let victim = ws.iter().find(|(_, r)| r == "1").unwrap().0;
    Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    let out = launcher.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("restarting the group"), "{text}");
    let m = metrics(tmp.path());
    assert_eq!(m.last().unwrap()["step"].as_u64(), Some(LONG_RUN as u64));
}

#[test]
fn a_batch_that_does_not_split_over_the_workers_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), 4, 100);
    let out = Command::new(exe())
        .args(["--cpu", "2", "--timeout", "20", "--set", "run.batch_size=9"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("run.batch_size") && text.contains("divisible"),
        "{text}"
    );
}

/// On a terminal (a pseudo-terminal from `script`) the log is colored; `NO_COLOR` turns every
/// escape code off, the progress bar's included.
#[test]
fn no_color_means_no_escape_codes_even_on_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), 3, 1000);
    let on_terminal = |no_color: bool, name: &str| {
        let cmd = format!("{} --set run.name={name} {}", exe(), cfg.display());
        let mut c = Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"]);
        if no_color {
            c.env("NO_COLOR", "1");
        } else {
            c.env_remove("NO_COLOR");
        }
        let out = c
            .output()
            .expect("script (util-linux) runs the command on a terminal");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let colored = on_terminal(false, "colored");
    assert!(
        colored.contains('\x1b'),
        "a terminal gets colors: {colored:?}"
    );
    let plain = on_terminal(true, "plain");
    assert!(plain.contains("done: 3 steps"), "{plain}");
    assert!(
        !plain.contains('\x1b'),
        "NO_COLOR: no escape codes: {plain:?}"
    );
}

/// `--sweep` trains one run per value, each in its own directory, and ends with the table; a
/// value that makes the config invalid is refused before anything trains.
#[test]
fn sweep_runs_each_value_and_prints_the_table() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), 2, 1000);
    let out = Command::new(exe())
        .args(["--sweep", "model.quantizer.estimator=rotation,ste"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = tmp.path().join("runs");
    for name in ["tiny-rotation", "tiny-ste"] {
        assert!(
            runs.join(name).join("checkpoints/step-00000002").exists(),
            "{name}"
        );
        let row = text
            .lines()
            .find(|l| l.ends_with(&runs.join(name).display().to_string()))
            .unwrap_or_else(|| panic!("a row for {name}: {text}"));
        assert!(
            row.contains('%') && row.split_whitespace().nth(1) == Some("2"),
            "{row}"
        );
    }
    assert!(
        text.contains("codes used") && text.contains("PSNR"),
        "{text}"
    );

    let out = Command::new(exe())
        .args(["--sweep", "optim.lr=1e-3,-1"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("optim.lr"), "{err}");
    assert!(
        !runs.join("tiny-1e-3").exists(),
        "nothing trained before the check"
    );
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// One "node" of a multi-node run on this machine: `launch --nnodes 2 --node-rank R --cpu 1`.
fn node(cfg: &Path, rank: usize, port: u16, timeout: &str, secret: Option<&str>) -> Command {
    let mut c = Command::new(exe());
    c.args(["--nnodes", "2", "--cpu", "1", "--timeout", timeout])
        .args(["--node-rank", &rank.to_string()])
        .args(["--master", &format!("127.0.0.1:{port}")])
        .arg(cfg)
        .env_remove("ROTOR_RUN_SECRET");
    if let Some(s) = secret {
        c.env("ROTOR_RUN_SECRET", s);
    }
    c
}

/// Two launchers on loopback, one worker each, end where one process accumulating both halves
/// does; once with a shared ROTOR_RUN_SECRET, once with the secret handed out by rank 0.
#[test]
fn two_launchers_on_loopback_train_as_one_process() {
    let one = tempfile::tempdir().unwrap();
    run_ok(
        &setup(one.path(), 4, 1000),
        &["--set", "optim.accumulate=2"],
    );
    let reference = metrics(one.path());
    for secret in [Some("words both nodes were given"), None] {
        let two = tempfile::tempdir().unwrap();
        let cfg = setup(two.path(), 4, 1000);
        let port = free_port();
        // Node 1 first: it waits for node 0's store.
        let n1 = node(&cfg, 1, port, "60", secret)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let n0 = node(&cfg, 0, port, "60", secret).output().unwrap();
        let n1 = n1.wait_with_output().unwrap();
        for (i, o) in [&n0, &n1].iter().enumerate() {
            assert!(
                o.status.success(),
                "node {i} (secret {secret:?}): {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let got = metrics(two.path());
        assert_eq!(got.len(), reference.len());
        for (a, b) in got.iter().zip(&reference) {
            for key in TRAINING_FIELDS {
                let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
                assert!(
                    (x - y).abs() <= 1e-6 * x.abs().max(y.abs()) + 1e-12,
                    "step {}: {key} is {x} over two nodes, {y} in one process",
                    a["step"]
                );
            }
        }
    }
}

#[test]
fn a_node_that_never_arrives_fails_node_0_within_the_timeout_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), 4, 1000);
    let start = Instant::now();
    let out = node(&cfg, 0, free_port(), "4", None).output().unwrap();
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(took < Duration::from_secs(40), "took {took:?}: {text}");
    assert!(text.contains("rank 1 (node 1)"), "{text}");
    assert!(text.contains("--master"), "{text}");
    assert!(text.contains("worker rank 0 failed"), "{text}");
}

/// Two hand-started workers as torchrun starts them (`--resume never` on the command line).
fn torchrun_workers(cfg: &Path, run_id: &str, restart: usize) -> Vec<std::process::Output> {
    let port = free_port();
    let workers: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(exe())
                .args(["--resume", "never", "--timeout", "30"])
                .arg(cfg)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("TORCHELASTIC_RUN_ID", run_id)
                .env("TORCHELASTIC_RESTART_COUNT", restart.to_string())
                .env_remove("ROTOR_RUN_SECRET")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    workers
        .into_iter()
        .map(|w| w.wait_with_output().unwrap())
        .collect()
}

/// torchrun restarts a failed group with the same command line and TORCHELASTIC_RESTART_COUNT
/// raised: the workers resume from the latest checkpoint even though it says `--resume never`,
/// when the run directory was started by the same job; another job's restart keeps `never` and
/// is refused, changing nothing.
#[test]
fn a_torchrun_restart_resumes_whatever_the_command_line_says() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), 3, 3);
    for o in torchrun_workers(&cfg, "job-a", 0) {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let cfg = setup(tmp.path(), 5, 3);
    // Another job's restart in this directory: `--resume never` stands, and refuses.
    let before = metrics(tmp.path()).len();
    let other = torchrun_workers(&cfg, "job-b", 1);
    assert!(other.iter().any(|o| !o.status.success()));
    assert_eq!(metrics(tmp.path()).len(), before);
    for o in torchrun_workers(&cfg, "job-a", 1) {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let log = std::fs::read_to_string(tmp.path().join("runs/tiny/logs/rank-0.log")).unwrap();
    assert!(log.contains("restart 1 of the group"), "{log}");
    let steps: Vec<u64> = metrics(tmp.path())
        .iter()
        .map(|m| m["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5], "the restart went on from step 3");
}

/// Under torchrun a failing worker leaves its error where the agent reads it.
#[test]
fn a_failing_worker_writes_torchruns_error_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), 3, 1000);
    let file = tmp.path().join("error.json");
    let out = Command::new(exe())
        .args(["--set", "data.source.train=/nonexistent/images"])
        .arg(&cfg)
        .env("TORCHELASTIC_ERROR_FILE", &file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let message = report["message"]["message"].as_str().unwrap();
    assert!(message.contains("/nonexistent/images"), "{report}");
    let info = &report["message"]["extraInfo"];
    assert!(
        info["py_callstack"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/images")
    );
    let ts: u64 = info["timestamp"].as_str().unwrap().parse().unwrap();
    assert!(ts > 1_700_000_000);
}

/// Garbage and a stranger speaking the store's protocol without the run's secret reach rank 0's
/// store in the middle of training: both are logged and refused, and the run ends as an
/// undisturbed one does.
#[test]
fn strangers_at_the_store_are_refused_without_disturbing_training() {
    use std::io::{Read, Write};
    let quiet = tempfile::tempdir().unwrap();
    run_ok(
        &setup(quiet.path(), 40, 1000),
        &["--cpu", "2", "--timeout", "30"],
    );
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path(), 40, 1000);
    let port = free_port();
    let master = format!("127.0.0.1:{port}");
    let mut child = start(&cfg, &["--master", &master]);
    wait_for_steps(tmp.path(), 2, &mut child);
    let closed = |mut s: std::net::TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut b = [0u8; 16];
        matches!(s.read(&mut b), Ok(0) | Err(_))
    };
    let mut garbage = std::net::TcpStream::connect(&master).unwrap();
    garbage
        .write_all(&[0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff, 0x01])
        .unwrap();
    assert!(closed(garbage));
    // torch's handshake (VALIDATE, magic 0x3C85F7CE), then a SET of a ring address: refused.
    let mut stranger = std::net::TcpStream::connect(&master).unwrap();
    let mut req = vec![0x00, 0xce, 0xf7, 0x85, 0x3c, 0x01];
    for part in [&b"/rotor/rotor/0/addr/1"[..], b"10.9.9.9:1"] {
        req.extend_from_slice(&(part.len() as u64).to_le_bytes());
        req.extend_from_slice(part);
    }
    stranger.write_all(&req).unwrap();
    assert!(closed(stranger));
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(tmp.path().join("runs/tiny/logs/rank-0.log")).unwrap();
    assert_eq!(log.matches("refused the connection").count(), 2, "{log}");
    assert!(log.contains("before proving the run secret"), "{log}");
    assert_eq!(
        training_fields(&metrics(tmp.path())),
        training_fields(&metrics(quiet.path()))
    );
}
