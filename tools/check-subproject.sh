#!/usr/bin/env bash
# TAP test: an outside meson project (capi-tests/subproject, with the
# programs of capi-tests/install) uses aioctx as a subproject
# (subprojects/aioctx links to this tree) with each meson version aioctx
# supports: the oldest stated in meson.build's meson_version (1.0.1, Debian
# 12), Ubuntu 24.04's 1.3.2, and the meson running the tests. For each:
# `dependency('aioctx')` resolves through meson.override_dependency, setup
# needs no C++ compiler (CXX=false), only the library and the glue are
# built (none of aioctx's tests), and the programs - shared, static
# (`static: true`) and through the glue libraries - run; once more with the
# current meson and default_library=static.
#
# Each meson version is pip-installed into a venv under the build dir
# (kept, so reruns are fast); one cargo target dir is shared by all. A
# version whose venv cannot be made (no network) is skipped.
#
# Usage: check-subproject.sh SOURCE_DIR WORK_DIR CURRENT_MESON
set -uo pipefail

if [ $# -ne 3 ]; then
    echo "usage: $0 SOURCE_DIR WORK_DIR CURRENT_MESON" >&2
    exit 2
fi
src=$1 work=$2 current_meson=$3
versions=(1.0.1 1.3.2)

source "$(dirname "$0")/tap.sh"
skip() { n=$((n + 1)); echo "ok $n # SKIP $1"; }

mkdir -p "$work"
# One outside project for every version (so cargo sees one manifest path
# and builds the Rust library once), a build dir per version.
proj=$work/project
rm -rf "$proj"
mkdir -p "$proj/subprojects"
cp "$src/capi-tests/subproject/meson.build" "$src"/capi-tests/install/outside*.c "$proj/"
ln -s "$src" "$proj/subprojects/aioctx"

# meson_for VERSION: prints the path of that meson, installing it if needed.
meson_for() {
    local venv=$work/venv-$1
    if [ ! -x "$venv/bin/meson" ] || [ "$("$venv/bin/meson" --version)" != "$1" ]; then
        rm -rf "$venv"
        python3 -m venv "$venv" >"$work/venv-$1.log" 2>&1 &&
            timeout 300 "$venv/bin/pip" install --quiet --disable-pip-version-check --retries 1 --timeout 20 \
                "meson==$1" >>"$work/venv-$1.log" 2>&1 || return 1
    fi
    echo "$venv/bin/meson"
}

# check MESON LABEL [SETUP-ARGS...]: configures, builds and runs the
# outside project. With default_library=static, plain dependency('aioctx')
# is the static library too.
check() {
    local meson=$1 label=$2 build=$work/build-$2 log=$work/build-$2.log
    shift 2
    rm -rf "$build"
    # forcefallback: an aioctx.pc on the system must not be picked instead.
    if ! CXX=false "$meson" setup "$build" "$proj" --wrap-mode=forcefallback \
            -Daioctx:cargo_target_dir="$work/cargo-target" "$@" >"$log" 2>&1; then
        diag <"$log"
        ok 1 "meson $label: setup with aioctx as a subproject (no C++ compiler)"
        return
    fi
    ok 0 "meson $label: setup with aioctx as a subproject (no C++ compiler)"
    grep -qE 'uses feature introduced in|uses features which were added' "$log"
    ok "$((! $?))" "meson $label: no feature newer than the stated meson_version"
    if ! "$meson" compile -C "$build" >>"$log" 2>&1; then
        tail -40 "$log" | diag
        ok 1 "meson $label: builds"
        return
    fi
    ok 0 "meson $label: builds"
    local stray
    stray=$(find "$build/subprojects" -name 'test-*' -o -name 'header-c*' -o -name iothreads)
    ok "$([ -z "$stray" ]; echo $?)" "meson $label: none of aioctx's tests or examples built"
    # No LD_LIBRARY_PATH: meson's build rpath finds the subproject's library.
    local prog
    for prog in outside outside-static outside-glib outside-uv; do
        [ -e "$build/$prog" ] || continue
        if env -u LD_LIBRARY_PATH "$build/$prog" >"$build/$prog.out" 2>&1; then
            ok 0 "meson $label: $prog runs"
        else
            diag <"$build/$prog.out"
            ok 1 "meson $label: $prog runs"
        fi
    done
    case " $* " in
    *" -Ddefault_library=static "*)
        grep -qx "library static" "$build/outside.out"
        ok $? "meson $label: outside (dependency('aioctx')) is linked statically"
        ;;
    *)
        grep -q "^library $build/subprojects/aioctx/libaioctx.so" "$build/outside.out"
        ok $? "meson $label: outside loaded the subproject's libaioctx.so"
        ;;
    esac
    grep -qx "library static" "$build/outside-static.out"
    ok $? "meson $label: outside-static needs no libaioctx.so"
}

for v in "${versions[@]}"; do
    if meson=$(meson_for "$v"); then
        check "$meson" "$v"
    else
        diag <"$work/venv-$v.log"
        skip "meson $v: could not pip-install it into a venv (no network?)"
    fi
done
current=$("$current_meson" --version)
check "$current_meson" "$current"
check "$current_meson" "$current-static" -Ddefault_library=static

echo "1..$n"
[ "$failed" -eq 0 ]
