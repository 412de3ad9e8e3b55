#!/usr/bin/env bash
# Runs every benchmark in benches/ against its baseline in one go, in a
# release build, and writes benches/results.json and benches/scaling.png.
#
#   tools/bench.sh           real sizes (a few minutes on a 2-core machine)
#   tools/bench.sh --quick   tiny sizes: checks the pipeline, numbers mean nothing;
#                            writes into the build dir, not benches/
#
# Installs what it needs when missing: meson/ninja and matplotlib with pip,
# libglib2.0-dev, libuv1-dev and fio with apt-get (as root; otherwise the glib
# and libuv variants of the wake-up benchmark are left out and reported as
# null, and without fio the I/O benchmark has no baseline).
# The build dir is build-bench/ (buildtype=release, so cargo builds the Rust
# library with --release; the C side is compiled with -O2).
# Any failed check in a benchmark stops the run: no numbers from a broken run.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/ensure-meson.sh

quick=0
[ "${1:-}" = --quick ] && quick=1
builddir=${AIOCTX_BENCH_BUILDDIR:-build-bench}
say() { printf '== %s\n' "$*" >&2; }

ensure_meson

# glib and libuv for the wake-up comparison.
if ! pkg-config --exists glib-2.0 libuv 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing libglib2.0-dev, libuv1-dev and pkg-config with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends pkg-config libglib2.0-dev libuv1-dev >/dev/null
    else
        say "glib/libuv development files missing and cannot install them: those variants are skipped"
    fi
fi

# fio: the baseline of the O_DIRECT / queue-depth benchmark.
if ! command -v fio >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "installing fio with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq --no-install-recommends fio >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends fio >/dev/null; } ||
            say "cannot install fio: the io-qd benchmark runs without its baseline"
    else
        say "fio missing and cannot install it (not root): the io-qd benchmark runs without its baseline"
    fi
fi

# matplotlib for the plot (Debian's python refuses plain pip installs: PEP 668).
if ! python3 -c 'import matplotlib' 2>/dev/null; then
    say "installing matplotlib with pip"
    pip=(python3 -m pip install --quiet --disable-pip-version-check
         --no-warn-script-location --root-user-action=ignore)
    "${pip[@]}" matplotlib 2>/dev/null || "${pip[@]}" --user --break-system-packages matplotlib
fi

say "release build in $builddir"
log=$(mktemp)
raw=$(mktemp)
trap 'rm -f "$log" "$raw"' EXIT
quiet() { "$@" >"$log" 2>&1 || { cat "$log" >&2; return 1; }; }
opts=(--buildtype=release -Doptimization=2)
if [ -f "$builddir/build.ninja" ]; then
    # Reconfigure: picks up glib/libuv if they were just installed.
    quiet meson setup --reconfigure "$builddir" "${opts[@]}" ||
        quiet meson setup --wipe "$builddir" "${opts[@]}"
else
    quiet meson setup "$builddir" "${opts[@]}"
fi
# Only the benchmarks (and the library they link): the rest of the tree is
# not needed here and is built by tools/test.sh.
benches=(context-set lock-uncontended wakeup handoff file-io io-qd inactivate)
quiet meson compile -C "$builddir" "${benches[@]}"
export LD_LIBRARY_PATH="$PWD/$builddir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
b=$builddir/benches

run() {
    say "$*"
    local out
    out=$("$@")
    printf '%s\n' "$out" >>"$raw"
    printf '%s\n' "$out" | cut -c1-300 >&2
}

# 7: IOPS against queue depth, O_DIRECT and buffered, both backends, and fio
# (io_uring at the same depths, psync at depth 1) on the same file, in
# alternating rounds so that both see the same machine. The file lives on
# disk (/var/tmp), not on a tmpfs /tmp, where O_DIRECT is not the disk's.
qd_rounds() { # MB OPS REPS QDLIST FIO_SECONDS ROUNDS
    local file=${AIOCTX_BENCH_IO_FILE:-/var/tmp/aioctx-bench-qd.img} round qd rw direct
    for round in $(seq "$6"); do
        run "$b/io-qd" "$file" "$1" "$2" "$3" "$4"
        command -v fio >/dev/null || continue
        for qd in ${4//,/ }; do
            for direct in 1 0; do
                for rw in randread randwrite; do fio_run "$file" "$1" "$5" io_uring "$direct" "$qd" "$rw"; done
            done
        done
        for rw in randread randwrite; do fio_run "$file" "$1" "$5" psync 1 1 "$rw"; done
    done
    rm -f "$file" "$file.buffered"
}
fio_run() { # FILE MB SECONDS ENGINE DIRECT QD RW: on io-qd's file for that mode
    say "fio $4 direct=$5 iodepth=$6 $7"
    local f=$1
    [ "$5" = 1 ] || f=$1.buffered
    fio --name=qd --filename="$f" --size="$2M" --bs=4k --rw="$7" --ioengine="$4" --direct="$5" \
        --iodepth="$6" --runtime="$3" --time_based --randrepeat=0 --norandommap \
        --output-format=json | python3 tools/fio-line.py "$4" "$5" "$6" >>"$raw"
    # As io-qd does after its buffered writes: the next run pays no writeback.
    sync "$f"
}

if [ "$quick" = 1 ]; then
    AIOCTX_BENCH_SET_MODE=many run "$b/context-set" 3 100,1000,10000 1,16,1024 1
    run "$b/context-set" 3 100,1000 1,16 1
    run "$b/lock-uncontended" 100000
    run "$b/wakeup" 500 3
    run "$b/handoff" 500 3
    run "$b/file-io" 4 1000 3
    run "$b/file-io" --one-cpu 4 1000 3
    AIOCTX_IO_BACKEND=threads run "$b/file-io" 4 1000 3
    qd_rounds 8 300 1 1,32 1 1
    for n in 100 300; do
        for c in 1 8; do run "$b/inactivate" "$n" "$c" 0 2; done
    done
    run "$b/inactivate" 100 8 4 2
else
    # 1: sets vs list scan; 1024 contexts is the "1k contexts" of the target.
    # The targets are checked on the batch call; one call per node is reported too.
    AIOCTX_BENCH_SET_MODE=many run "$b/context-set" 7 100,1000,10000,100000 1,16,256,1024,4096 20
    run "$b/context-set" 7 100,1000,10000,100000 1,16,256,1024,4096 20
    # 2: uncontended lock through the C ABI vs a recursive pthread mutex.
    run "$b/lock-uncontended" 10000000
    # 3: cross-thread wake-up ping-pong.
    run "$b/wakeup" 20000 7
    # 4: lock handoff under poll_while.
    run "$b/handoff" 50000 7
    # 5: raw-file I/O path vs plain pread/pwrite (page cache); threads where
    # the scheduler puts them, then the whole process on one CPU.
    # Nodes on their default backend (io_uring where available), then on
    # the worker pool.
    run "$b/file-io" 64 20000 7
    run "$b/file-io" --one-cpu 64 20000 7
    AIOCTX_IO_BACKEND=threads run "$b/file-io" 64 20000 7
    AIOCTX_IO_BACKEND=threads run "$b/file-io" --one-cpu 64 20000 7
    # 7: see qd_rounds.
    qd_rounds 256 10000 2 1,2,4,8,16,32 2 3
    # 6: inactivate_all (no writes in flight), then one run with writes in flight.
    for n in 1000 10000; do
        for c in 1 64 1024; do run "$b/inactivate" "$n" "$c" 0 3; done
    done
    run "$b/inactivate" 1000 64 16 3
fi

out=benches
[ "$quick" = 1 ] && out=$builddir
say "writing $out/results.json, $out/scaling.png and $out/io-qd.png"
python3 tools/bench-plot.py "$raw" "$out/results.json" "$out/scaling.png" --io-plot "$out/io-qd.png" \
    --build "$builddir" $([ "$quick" = 1 ] && echo --quick)
