#!/usr/bin/env bash
# Installs the build into a temporary DESTDIR and uses it like a C library
# from outside the tree (a meson test, TAP output):
#   - `meson install` puts libaioctx.so.X.Y.Z (SONAME libaioctx.so.X), the
#     libaioctx.so.X and libaioctx.so links, libaioctx.a, aioctx.h,
#     aioctx/qemu-compat.h and aioctx.pc under the prefix, and the glue
#     libraries that were built (libaioctx-glib, libaioctx-uv: library,
#     header, .pc);
#   - one version everywhere: Cargo.toml's, meson's project version, the .pc
#     files', the header's AIOCTX_VERSION_* macros, aioctx_version() of the
#     installed library, and the file name and SONAME of the library;
#   - capi-tests/install/ is an outside plain-Makefile project: copied out of
#     the tree, `make` builds outside.c with `pkg-config --cflags --libs
#     aioctx` against the installed copy (strict C11), and again statically
#     (libaioctx.a + `pkg-config --static` flags), and the glue programs with
#     `pkg-config ... aioctx-glib` / `aioctx-uv`; each runs with
#     LD_LIBRARY_PATH set to the installed lib dir only.
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

source "$(dirname "$0")/tap.sh"

for tool in pkg-config readelf make "${CC:-cc}"; do
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
real_name=libaioctx.so.$meson_version
ok "$([ -f "$lib/$real_name" ] && [ ! -L "$lib/$real_name" ]; echo $?)" "$libdir/$real_name is the library"
ok "$([ "$(readlink "$lib/$soname")" = "$real_name" ]; echo $?)" \
    "$libdir/$soname is a symlink to $real_name"
ok "$([ "$(readlink "$lib/libaioctx.so")" = "$soname" ]; echo $?)" \
    "$libdir/libaioctx.so is a symlink to $soname"
ok "$([ -f "$lib/libaioctx.a" ]; echo $?)" "$libdir/libaioctx.a"
ok "$([ -f "$inc/aioctx.h" ]; echo $?)" "$includedir/aioctx.h"
ok "$([ -f "$inc/aioctx/qemu-compat.h" ]; echo $?)" "$includedir/aioctx/qemu-compat.h"
ok "$([ -f "$lib/pkgconfig/aioctx.pc" ]; echo $?)" "$libdir/pkgconfig/aioctx.pc"
ok "$(cmp -s "$inc/aioctx.h" "$src/include/aioctx.h"; echo $?)" \
    "the installed aioctx.h is the committed one"
# Nothing from the tests, benchmarks or examples.
extra=$(find "$root" -type f | grep -v -e '/libaioctx' -e '/pkgconfig/aioctx' -e '/aioctx[^/]*\.h$' -e '/aioctx/qemu-compat\.h$')
ok "$([ -z "$extra" ]; echo $?)" "nothing else is installed"
[ -n "$extra" ] && diag <<<"$extra"

elf_soname=$(readelf -d "$lib/$real_name" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
ok "$([ "$elf_soname" = "$soname" ]; echo $?)" "SONAME is $soname (got '$elf_soname')"

# The glue libraries that were built (meson's introspection lists them).
glue=()
for name in glib uv; do
    if ls "$build"/libaioctx-$name.* >/dev/null 2>&1; then
        glue+=("$name")
        ok "$([ -f "$lib/libaioctx-$name.so.$meson_version" ] || [ -f "$lib/libaioctx-$name.a" ]; echo $?)" \
            "$libdir/libaioctx-$name"
        ok "$([ -f "$inc/aioctx-$name.h" ]; echo $?)" "$includedir/aioctx-$name.h"
        ok "$([ -f "$lib/pkgconfig/aioctx-$name.pc" ]; echo $?)" "$libdir/pkgconfig/aioctx-$name.pc"
    fi
done
echo "# glue libraries built: ${glue[*]:-none}"

# ---- one version ----------------------------------------------------------------
cargo_version=$(sed -n '/^\[package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "$src/Cargo.toml")
ok "$([ -n "$cargo_version" ]; echo $?)" "Cargo.toml's version: $cargo_version"
ok "$([ "$meson_version" = "$cargo_version" ]; echo $?)" \
    "meson.build's project version ($meson_version) is Cargo.toml's"
ok "$([ "$soname" = "libaioctx.so.${cargo_version%%.*}" ]; echo $?)" \
    "the SONAME carries Cargo.toml's major version"
header_version=$(for part in MAJOR MINOR MICRO; do
    sed -n "s/^#define AIOCTX_VERSION_$part \([0-9]*\)$/\1/p" "$inc/aioctx.h"
done | paste -sd.)
ok "$([ "$header_version" = "$cargo_version" ]; echo $?)" \
    "the installed header's AIOCTX_VERSION_MAJOR.MINOR.MICRO: $header_version"

# The installed .pc files with their prefix moved to DESTDIR (per file: the
# system's glib-2.0.pc and libuv.pc must keep theirs), searched first.
mkdir -p "$tmp/pc"
for f in "$lib"/pkgconfig/aioctx*.pc; do
    sed "s|^prefix=.*|prefix=$root|" "$f" >"$tmp/pc/${f##*/}"
done
export PKG_CONFIG_PATH=$tmp/pc
pc() { pkg-config "$@" aioctx; }
pc_version=$(pc --modversion 2>&1)
ok "$([ "$pc_version" = "$cargo_version" ]; echo $?)" "pkg-config --modversion aioctx: $pc_version"
for name in "${glue[@]}"; do
    v=$(pkg-config --modversion "aioctx-$name" 2>&1)
    ok "$([ "$v" = "$cargo_version" ]; echo $?)" "pkg-config --modversion aioctx-$name: $v"
done

# ---- an outside Makefile project, built against the installed copy -------------
cflags=$(pc --cflags)
echo "# cflags: $cflags"
echo "# libs:   $(pc --libs)"
echo "# static: $(pc --static --libs)"
ok "$(case " $cflags " in *" -I$inc "*) echo 0 ;; *) echo 1 ;; esac)" \
    "pkg-config --cflags points into the installed tree"
proj=$tmp/project
cp -r "$src/capi-tests/install" "$proj"

# build TARGET: make TARGET in the outside project.
build() {
    if make -C "$proj" CC="${CC:-cc}" "$1" >"$tmp/make-$1.log" 2>&1; then
        ok 0 "make $1"
    else
        diag <"$tmp/make-$1.log"
        ok 1 "make $1"
        return 1
    fi
}
# run PROGRAM: runs it with the installed lib dir only on the library path
# (not the build dir meson's test env points at); its output goes to
# $tmp/PROGRAM.out.
run() {
    if env LD_LIBRARY_PATH="$lib" "${run_wrapper[@]}" "$proj/$1" >"$tmp/$1.out" 2>&1; then
        ok 0 "$1 runs against the installed library"
    else
        ok 1 "$1 runs against the installed library"
    fi
    diag <"$tmp/$1.out"
}

if build outside; then
    run outside
    ok "$(grep -qx "library $lib/$real_name" "$tmp/outside.out"; echo $?)" \
        "the library it loaded is the installed $real_name"
    ok "$(grep -qx "version $cargo_version" "$tmp/outside.out"; echo $?)" \
        "aioctx_version() of the installed library is $cargo_version"
    ok "$(grep -qx "header $cargo_version" "$tmp/outside.out"; echo $?)" \
        "the AIOCTX_VERSION_* macros it was compiled with say $cargo_version"
fi
if build outside-static; then
    run outside-static
    ok "$(grep -qx "library static" "$tmp/outside-static.out"; echo $?)" \
        "outside-static needs no libaioctx.so"
fi
for name in "${glue[@]}"; do
    build "outside-$name" && run "outside-$name"
done

echo "1..$n"
[ "$failed" -eq 0 ]
