#!/usr/bin/env bash
# Generates the C header from the Rust sources into a temporary file and
# prints its path (the caller removes it). The generator is the small package
# in tools/header-gen (cbindgen, pinned there and locked); it is built once
# into target/header-gen and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp "${TMPDIR:-/tmp}/aioctx-header.XXXXXX")
cargo run --quiet --locked --manifest-path tools/header-gen/Cargo.toml \
    --target-dir target/header-gen -- . "$out" || { rm -f "$out"; exit 1; }
echo "$out"
