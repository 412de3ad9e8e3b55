#!/usr/bin/env bash
# Fails when include/aioctx.h differs from what the Rust source generates:
# header drift is silent ABI breakage for every C user.
set -euo pipefail
cd "$(dirname "$0")/.."
generated=$(bash tools/generated-header.sh)
trap 'rm -f "$generated"' EXIT
if ! diff -u include/aioctx.h "$generated"; then
    echo "include/aioctx.h is out of date; run tools/update-header.sh and commit it" >&2
    exit 1
fi
echo "include/aioctx.h matches the generated header"
