#!/usr/bin/env bash
# The project's test command: Rust unit tests, header drift check, the meson
# build, the C tests and source checks (import-circles: the layers of src/
# import only downwards), the C tests again built with AddressSanitizer
# (build-asan/; AIOCTX_SKIP_ASAN=1 skips it), and under valgrind
# (AIOCTX_SKIP_VALGRIND=1 skips that last stage).
#
# Every stage runs even after an earlier one failed, so one run shows all
# problems. The last line is "N passed, N failed" for CI: the sum of cargo's
# and meson's per-test results, plus 1 for the drift check, plus 1 failure for
# a stage that failed without reporting tests (e.g. a compile error).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/ensure-meson.sh

passed=0
failed=0
failures=()  # names of the failed tests, listed again in the summary
stage() { printf '\n===== %s\n' "$*"; }
count() { passed=$((passed + $1)); failed=$((failed + $2)); }

# Prints "passed failed" for one meson test log (one JSON object per line),
# then the name and result of each failed test, one per line.
meson_counts() {
    python3 - "$1" <<'EOF'
import json, os, sys
ok = bad = 0
names = []
if os.path.exists(sys.argv[1]):
    for line in open(sys.argv[1]):
        test = json.loads(line)
        if test["result"] in ("OK", "EXPECTEDFAIL"):
            ok += 1
        elif test["result"] != "SKIP":
            bad += 1
            names.append("%s (%s)" % (test["name"], test["result"]))
print(ok, bad)
for name in names:
    print(name)
EOF
}

# Runs `meson test` in build dir $1 with extra args; counts from the log it
# writes ($2).
run_meson_tests() {
    local dir=$1 log=$2
    shift 2
    rm -f "$log"
    local rc=0
    meson test -C "$dir" --print-errorlogs "$@" || rc=$?
    local counts
    counts=$(meson_counts "$log")
    read -r p f <<<"$counts"
    while IFS= read -r name; do
        [ -n "$name" ] && failures+=("$dir: $name")
    done < <(tail -n +2 <<<"$counts")
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1
        failures+=("$dir: meson test exited with $rc")
    fi
    echo "-- meson: $p passed, $f failed"
    count "$p" "$f"
}

stage "tools: meson and ninja"
ensure_meson
echo "meson $(meson --version), ninja $(ninja --version)"

# --all-targets leaves out the doc tests, and with them the compile_fail
# tests that prove safe Rust cannot build a wild I/O buffer: run them too.
stage "Rust tests: cargo test --all-targets, then --doc"
locked=()
[ -f Cargo.lock ] && locked=(--locked)
cargo_log=$(mktemp)
trap 'rm -f "$cargo_log"' EXIT
cargo_rc=0
cargo test "${locked[@]}" --all-targets --no-fail-fast 2>&1 | tee "$cargo_log" || cargo_rc=$?
cargo test "${locked[@]}" --doc --no-fail-fast 2>&1 | tee -a "$cargo_log" || cargo_rc=$?
read -r p f < <(awk '/^test result:/ { p += $4; f += $6 } END { print p + 0, f + 0 }' "$cargo_log")
while IFS= read -r name; do
    failures+=("cargo: $name")
done < <(awk '/^test .* FAILED$/ { print $2 }' "$cargo_log")
if [ "$cargo_rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    f=1
    failures+=("cargo test exited with $cargo_rc")
fi
echo "-- cargo: $p passed, $f failed"
count "$p" "$f"

stage "header drift: include/aioctx.h vs generated"
if bash tools/check-header.sh; then count 1 0; else count 0 1; failures+=("header drift"); fi

# The embedding examples need GLib's and libuv's development files; without
# them meson skips those examples.
if ! pkg-config --exists glib-2.0 libuv 2>/dev/null && [ "$(id -u)" = 0 ]; then
    stage "apt-get install libglib2.0-dev libuv1-dev"
    { apt-get update -qq && apt-get install -y -qq pkg-config libglib2.0-dev libuv1-dev >/dev/null; } ||
        echo "-- could not install them: the embedding examples are not built"
fi

stage "meson build (build/)"
if meson_build; then
    stage "C tests: meson test"
    run_meson_tests build build/meson-logs/testlog.json

    if [ "${AIOCTX_SKIP_VALGRIND:-0}" = 1 ]; then
        stage "C tests under valgrind: skipped (AIOCTX_SKIP_VALGRIND=1)"
    else
        stage "C tests under valgrind: meson test --setup valgrind"
        if ! command -v valgrind >/dev/null && [ "$(id -u)" = 0 ]; then
            apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
        fi
        run_meson_tests build build/meson-logs/testlog-valgrind.json --setup valgrind
    fi
else
    echo "-- meson build failed; C tests not run"
    count 0 1
    failures+=("meson build")
fi

# AddressSanitizer: meson's b_sanitize instruments the C tests, examples and
# benchmarks (the Rust library is built by cargo and not instrumented, but
# ASan intercepts malloc/free, so a use-after-free in a C callback is caught).
# Its own build dir: valgrind cannot run ASan binaries, and the flags would
# change every object of build/. Not run there, with the reason:
#   install  - checks installing and pkg-config, not memory (and builds an
#              outside program without the sanitizer);
#   symbols  - runs python on the library, which ASan does not instrument.
# The valgrind setup is a setup of build/, so it never runs here. Leak
# detection stays on: LSan reports memory nothing points to any more, which
# the Rust side must not leave either (valgrind checks the same in build/);
# the one leak glibc makes on the library's behalf is suppressed, with its
# reason, in capi-tests/lsan.supp (meson.build passes it to the tests).
asan_build() {
    local opts=(-Db_sanitize=address)
    if [ -f build-asan/build.ninja ]; then
        # As for build/: a build dir of another meson version is set up anew.
        meson setup --reconfigure build-asan "${opts[@]}" ||
            meson setup --wipe build-asan "${opts[@]}"
    else
        meson setup build-asan "${opts[@]}"
    fi && meson compile -C build-asan
}
if [ "${AIOCTX_SKIP_ASAN:-0}" = 1 ]; then
    stage "C tests with AddressSanitizer: skipped (AIOCTX_SKIP_ASAN=1)"
else
    stage "C tests with AddressSanitizer (build-asan/, -Db_sanitize=address)"
    if asan_build; then
        run_meson_tests build-asan build-asan/meson-logs/testlog.json \
            --no-suite install --no-suite symbols --no-suite source
    else
        echo "-- ASan build failed; its C tests not run"
        count 0 1
        failures+=("ASan build")
    fi
fi

stage "summary"
for name in "${failures[@]}"; do
    echo "FAILED: $name"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
