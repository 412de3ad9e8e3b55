//! Random sequences of the Rust API, checked step by step against a shadow
//! model; the interpreter is shared with `tests/sequences.rs`.
//!
//! Run: `tools/fuzz.sh SECONDS` (or `RUSTC_BOOTSTRAP=1 cargo fuzz run sequences`
//! from the repository root). Replay an artifact with the debug build:
//! `AIOCTX_SEQ_FILE=fuzz/artifacts/sequences/crash-... cargo test --test sequences replay_file -- --nocapture`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/sequences/ops.rs"]
mod ops;

/// Every check on; a check of a known, reported library bug can be turned
/// off here (see `ops::Config`) so that a long run keeps finding new things.
fn config() -> &'static ops::Config {
    static CONFIG: std::sync::OnceLock<ops::Config> = std::sync::OnceLock::new();
    CONFIG.get_or_init(ops::Config::default)
}

fuzz_target!(|data: &[u8]| {
    ops::run_bytes(data, config());
});
