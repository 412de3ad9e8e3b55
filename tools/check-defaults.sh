#!/usr/bin/env bash
# TAP test: what a plain `meson setup DIR` of this tree gives, the way a
# packager or a user installing from source runs it (no build):
#   - an optimized build (buildtype=debugoptimized), whose cargo step uses
#     the release profile: `meson install` installs an optimized library;
#   - `meson install` builds only what it installs: every target built by
#     default is installed (tests, benchmarks and examples are not built);
#   - a debug build (`--buildtype=debug`, as tools/test.sh uses) keeps the
#     quick unoptimized cargo profile.
#
# Usage: check-defaults.sh MESON SOURCE_DIR WORK_DIR
set -uo pipefail

if [ $# -ne 3 ]; then
    echo "usage: $0 MESON SOURCE_DIR WORK_DIR" >&2
    exit 2
fi
meson=$1 src=$2 work=$3

source "$(dirname "$0")/tap.sh"

rm -rf "$work"
mkdir -p "$work"
if ! "$meson" setup "$work/default" "$src" >"$work/default.log" 2>&1; then
    diag <"$work/default.log"
    echo "Bail out! meson setup with no options failed"
    exit 1
fi
ok 0 "meson setup with no options"

buildtype=$("$meson" introspect "$work/default" --buildoptions |
    python3 -c 'import json, sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "buildtype"))')
ok "$([ "$buildtype" = debugoptimized ]; echo $?)" "the default buildtype is debugoptimized (got $buildtype)"
grep -q -- "--profile release" "$work/default/build.ninja"
ok $? "cargo builds the Rust library with the release profile"

not_installed=$("$meson" introspect "$work/default" --targets | python3 -c '
import json, sys
for t in json.load(sys.stdin):
    if t["build_by_default"] and not t["installed"]:
        print(t["name"])')
ok "$([ -z "$not_installed" ]; echo $?)" "every target built by default is installed"
[ -n "$not_installed" ] && diag <<<"$not_installed"

if "$meson" setup "$work/debug" "$src" --buildtype=debug >"$work/debug.log" 2>&1; then
    grep -q -- "--profile dev" "$work/debug/build.ninja"
    ok $? "--buildtype=debug: cargo's dev profile"
else
    diag <"$work/debug.log"
    ok 1 "meson setup --buildtype=debug"
fi
rm -rf "$work"

echo "1..$n"
[ "$failed" -eq 0 ]
