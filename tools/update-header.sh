#!/usr/bin/env bash
# Refreshes the committed header from the Rust source (run after changing
# src/capi, cbindgen.toml or the version in Cargo.toml, and commit the result).
set -euo pipefail
cd "$(dirname "$0")/.."
generated=$(bash tools/generated-header.sh)
trap 'rm -f "$generated"' EXIT
mkdir -p include
cp "$generated" include/aioctx.h
echo "updated include/aioctx.h"
