//! The launcher's integration tests as one binary: each module is one file of this directory
//! (its own doc comment says what it covers). `cargo test -p launch --features wgpu --test
//! integration wgpu::` runs one file's tests.

mod check_quantizer;
mod distributed;
mod eval;
mod export;
mod gpu_check;
mod plot;
mod tokens;
mod video;
mod wgpu;
