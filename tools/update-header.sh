#!/usr/bin/env bash
# Refreshes the committed header from the Rust source.
set -euo pipefail
cd "$(dirname "$0")/.."
generated=$(bash tools/generated-header.sh)
mkdir -p include
cp "$generated" include/aioctx.h
echo "updated include/aioctx.h from $generated"
