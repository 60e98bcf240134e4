//! The trainer's integration tests as one binary: each module is one file of this directory
//! (its own doc comment says what it covers). `cargo test -p trainer --test integration
//! training::` runs one file's tests.

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
