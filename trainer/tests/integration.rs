//! The trainer's integration tests as one binary: each module is one file of this directory
//! (its own doc comment says what it covers). `cargo test -p trainer --test integration
//! training::` runs one file's tests.

// Support shared by several modules.
#[path = "../../models/tests/support/busy_load.rs"]
mod busy_load;
#[path = "support/weights.rs"]
mod weights_support;

mod config;
mod data;
mod device_collectives;
mod distributed;
mod evaluation;
mod golden_metrics;
mod host_reads;
mod init_from;
mod tensorboard;
mod training;
mod video;

/// burn's backend RNG is process-global: these tests compare runs from one seed and draw weights
/// of their own, so they take turns (as they did when each file was its own process; the
/// trainer's own seeding lock covers only its initialization, not a test's draws).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
