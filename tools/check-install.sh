#!/usr/bin/env bash
# Installs the build into a temporary DESTDIR and uses it like a C library
# from outside the tree (a meson test, TAP output):
#   - `meson install` puts libaioctx.so.N (with that SONAME), the
#     libaioctx.so link, libaioctx.a, aioctx.h, aioctx/qemu-compat.h and
#     aioctx.pc under the prefix;
#   - one version everywhere: Cargo.toml's, meson's project version, the .pc
#     file's, aioctx_version() of the installed library, and the SONAME's
#     major number;
#   - capi-tests/install/outside.c builds with
#     `pkg-config --cflags --libs aioctx` against the installed copy (strict
#     C11) and runs with LD_LIBRARY_PATH set to the installed lib dir only;
#   - the same program links statically with `pkg-config --static` flags.
#
# Under `meson test --setup valgrind` meson runs this script in valgrind,
# which would check bash, not aioctx: the script leaves valgrind (an exec is
# not traced) and runs the two programs in valgrind instead.
#
# Usage: check-install.sh MESON BUILD_DIR SOURCE_DIR PREFIX LIBDIR INCLUDEDIR VERSION SONAME
set -uo pipefail

if [ $# -ne 8 ]; then
    echo "usage: $0 MESON BUILD_DIR SOURCE_DIR PREFIX LIBDIR INCLUDEDIR VERSION SONAME" >&2
    exit 2
fi
# Running in valgrind (it preloads its own libraries into the client):
# re-run natively, and run the programs in valgrind with the options of
# meson.build's valgrind setup.
case ${LD_PRELOAD:-} in
*vgpreload*)
    exec env -u LD_PRELOAD AIOCTX_INSTALL_VALGRIND="valgrind --error-exitcode=99 \
--leak-check=full --errors-for-leak-kinds=definite --track-fds=no --quiet" bash "$0" "$@"
    ;;
esac
# Runs a program built here, in valgrind if the test runs in valgrind.
read -r -a run_wrapper <<<"${AIOCTX_INSTALL_VALGRIND:-}"

meson=$1 build=$2 src=$3 prefix=$4 libdir=$5 includedir=$6 meson_version=$7 soname=$8

n=0
failed=0
ok() { # ok CONDITION-EXIT-STATUS DESCRIPTION
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then
        echo "ok $n - $2"
    else
        echo "not ok $n - $2"
        failed=$((failed + 1))
    fi
}
diag() { sed 's/^/# /'; }
bail() {
    echo "Bail out! $*"
    exit 1
}

for tool in pkg-config readelf "${CC:-cc}"; do
    command -v "$tool" >/dev/null || { echo "1..0 # SKIP $tool not found"; exit 0; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/aioctx-install.XXXXXX") || bail "mktemp failed"
trap 'rm -rf "$tmp"' EXIT
destdir=$tmp/destdir

# Absolute paths under DESTDIR (meson keeps libdir/includedir inside the prefix).
under() { case $1 in /*) echo "$destdir$1" ;; *) echo "$destdir$prefix/$1" ;; esac; }
lib=$(under "$libdir")
inc=$(under "$includedir")
root=$destdir$prefix

# --no-rebuild: `meson test` built everything already, and must not be
# re-entered from one of its own tests.
if ! "$meson" install -C "$build" --no-rebuild --destdir "$destdir" >"$tmp/install.log" 2>&1; then
    diag <"$tmp/install.log"
    bail "meson install --destdir failed"
fi
ok 0 "meson install --destdir $destdir"
[ ${#run_wrapper[@]} -gt 0 ] && echo "# the programs run in: ${run_wrapper[*]}"

# ---- what is installed ------------------------------------------------------
ok "$([ -f "$lib/$soname" ] && [ ! -L "$lib/$soname" ]; echo $?)" "$libdir/$soname is the library"
ok "$([ "$(readlink "$lib/libaioctx.so")" = "$soname" ]; echo $?)" \
    "$libdir/libaioctx.so is a symlink to $soname"
ok "$([ -f "$lib/libaioctx.a" ]; echo $?)" "$libdir/libaioctx.a"
ok "$([ -f "$inc/aioctx.h" ]; echo $?)" "$includedir/aioctx.h"
ok "$([ -f "$inc/aioctx/qemu-compat.h" ]; echo $?)" "$includedir/aioctx/qemu-compat.h"
ok "$([ -f "$lib/pkgconfig/aioctx.pc" ]; echo $?)" "$libdir/pkgconfig/aioctx.pc"
ok "$(cmp -s "$inc/aioctx.h" "$src/include/aioctx.h"; echo $?)" \
    "the installed aioctx.h is the committed one"

elf_soname=$(readelf -d "$lib/$soname" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
ok "$([ "$elf_soname" = "$soname" ]; echo $?)" "SONAME is $soname (got '$elf_soname')"

# ---- one version ----------------------------------------------------------------
cargo_version=$(sed -n '/^\[package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "$src/Cargo.toml")
ok "$([ -n "$cargo_version" ]; echo $?)" "Cargo.toml's version: $cargo_version"
ok "$([ "$meson_version" = "$cargo_version" ]; echo $?)" \
    "meson.build's project version ($meson_version) is Cargo.toml's"
ok "$([ "$soname" = "libaioctx.so.${cargo_version%%.*}" ]; echo $?)" \
    "the SONAME carries Cargo.toml's major version"

# Only the installed .pc file, relocated to DESTDIR.
pc() {
    PKG_CONFIG_LIBDIR=$lib/pkgconfig PKG_CONFIG_PATH= \
        pkg-config --define-variable=prefix="$root" "$@" aioctx
}
pc_version=$(pc --modversion 2>&1)
ok "$([ "$pc_version" = "$cargo_version" ]; echo $?)" "pkg-config --modversion aioctx: $pc_version"

# ---- an outside program, built against the installed copy ---------------------
cc=${CC:-cc}
cflags=$(pc --cflags)
libs=$(pc --libs)
echo "# cflags: $cflags"
echo "# libs:   $libs"
ok "$(case " $cflags " in *" -I$inc "*) echo 0 ;; *) echo 1 ;; esac)" \
    "pkg-config --cflags points into the installed tree"
cp "$src/capi-tests/install/outside.c" "$tmp/outside.c"
strict=(-std=c11 -Wall -Wextra -Werror -Wpedantic)
# shellcheck disable=SC2086 # pkg-config output is a word list
if (cd "$tmp" && "$cc" "${strict[@]}" $cflags outside.c -o outside $libs) >"$tmp/cc.log" 2>&1; then
    ok 0 "outside.c builds with pkg-config --cflags --libs aioctx"
    # The installed lib dir only: not the build dir meson's test env points at.
    if env LD_LIBRARY_PATH="$lib" "${run_wrapper[@]}" "$tmp/outside" >"$tmp/run.log" 2>&1; then
        ok 0 "it runs against the installed library"
    else
        ok 1 "it runs against the installed library"
    fi
    diag <"$tmp/run.log"
    ok "$(grep -qx "library $lib/$soname" "$tmp/run.log"; echo $?)" \
        "the library it loaded is the installed $soname"
    ok "$(grep -qx "version $cargo_version" "$tmp/run.log"; echo $?)" \
        "aioctx_version() of the installed library is $cargo_version"
else
    diag <"$tmp/cc.log"
    ok 1 "outside.c builds with pkg-config --cflags --libs aioctx"
fi

# ---- and statically -------------------------------------------------------------
static_libs=$(pc --static --libs-only-l | sed 's/-laioctx//g')
echo "# static: $lib/libaioctx.a $static_libs"
# shellcheck disable=SC2086
if (cd "$tmp" && "$cc" "${strict[@]}" $cflags outside.c -o outside-static \
        "$lib/libaioctx.a" $static_libs) >"$tmp/cc-static.log" 2>&1; then
    ok 0 "outside.c links libaioctx.a with pkg-config --static --libs"
    if env -u LD_LIBRARY_PATH "${run_wrapper[@]}" "$tmp/outside-static" >"$tmp/run-static.log" 2>&1; then
        ok 0 "the static program runs"
    else
        ok 1 "the static program runs"
    fi
    diag <"$tmp/run-static.log"
    ok "$(grep -qx "library static" "$tmp/run-static.log"; echo $?)" \
        "and needs no libaioctx.so"
else
    diag <"$tmp/cc-static.log"
    ok 1 "outside.c links libaioctx.a with pkg-config --static --libs"
fi

echo "1..$n"
[ "$failed" -eq 0 ]
