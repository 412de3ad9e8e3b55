#!/usr/bin/env bash
# Builds the project and runs the C examples a VMM author would read first.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/ensure-meson.sh

ensure_meson
# The examples are not built by default (not installed): name them.
meson_build iothreads migrate

# The build dir holds libaioctx.so.N; don't depend on the rpath meson records.
export LD_LIBRARY_PATH="$PWD/build${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# migrate --demo runs both migration roles itself (it forks the destination).
declare -A example_args=([migrate]=--demo)
for example in iothreads migrate; do
    exe=build/examples-c/$example
    if [ ! -x "$exe" ]; then
        echo "== $example: not built yet (no $exe), skipping"
        continue
    fi
    echo "== $example"
    "$exe" ${example_args[$example]:-}
done
