#!/usr/bin/env bash
# Fuzzes random sequences of the Rust API (contexts, sets, BHs, timers,
# IOThreads, graph operations) against the shadow model in
# tests/sequences/ops.rs, for the given number of seconds (default 600).
#
#   tools/fuzz.sh [SECONDS] [extra libFuzzer flags...]
#
# Not part of CI (tools/test.sh runs the same interpreter briefly as
# `cargo test --test sequences`). Installs cargo-fuzz if missing; cargo-fuzz
# needs nightly features, which RUSTC_BOOTSTRAP=1 enables on the stable
# toolchain. The corpus (fuzz/corpus/sequences) is kept between runs; a
# failing input lands in fuzz/artifacts/sequences/ and is replayed with
#   AIOCTX_SEQ_FILE=fuzz/artifacts/sequences/crash-... \
#     cargo test --test sequences replay_file -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
shift || true
case $seconds in
    '' | *[!0-9]*)
        echo "usage: $0 [SECONDS] [libFuzzer flags...]" >&2
        exit 2
        ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz..."
    cargo install --locked cargo-fuzz
fi

mkdir -p fuzz/corpus/sequences fuzz/artifacts/sequences
if [ -z "$(ls -A fuzz/corpus/sequences)" ]; then
    # Structured handover sequences (graphs, an IOThread, failures) as seeds:
    # libFuzzer alone grows inputs slowly and reaches those states late.
    echo "seeding fuzz/corpus/sequences..."
    AIOCTX_SEED_DIR="$PWD/fuzz/corpus/sequences" \
        cargo test --quiet --test sequences write_seeds >/dev/null
fi
cd fuzz
# -timeout: a step that hangs (a lost wake-up, a deadlock) is a finding too.
# -max_len: 512 bytes decode to at most ~256 operations.
RUSTC_BOOTSTRAP=1 exec cargo fuzz run sequences corpus/sequences -- \
    -max_total_time="$seconds" -timeout=10 -max_len=512 -print_final_stats=1 "$@"
