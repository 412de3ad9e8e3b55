#!/usr/bin/env python3
"""Collects the benchmarks' JSON lines (from tools/bench.sh) into one JSON
file with the targets checked, draws the scaling plot of the context-set
benchmark and the IOPS-against-queue-depth plot of io-qd and fio, and prints
a Markdown summary.

    bench-plot.py RAW.jsonl RESULTS.json PLOT.png [--io-plot PNG] [--build DIR] [--quick]
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

# Contexts counts drawn in the plot (others are in the JSON).
PLOT_CONTEXTS = (1, 16, 256, 1024, 4096)
# Thread placements of the wake-up and handoff benchmarks.
PLACEMENTS = ("same_cpu", "cross_cpu")


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        pass

    def git(*args):
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    commit = git("rev-parse", "--short", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(), "commit": commit}


def collect(path):
    benches = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            name = r["bench"]
            if name == "context-set" and r.get("mode") == "add":
                # One aioctx_set_add call per node: reported, not a target.
                name = "context-set-per-call"
            if name == "inactivate_all":
                benches.setdefault(name, []).append(r)
            elif name == "file-io":
                # tools/bench.sh runs nodes on their default backend first
                # (key "<placement>", as before io_uring), then on the
                # worker pool ("<placement>/threads").
                key = r["placement"]
                if key in benches.get(name, {}):
                    key += "/" + r.get("backend", "threads")
                benches.setdefault(name, {})[key] = r
            elif name == "io-qd":
                benches.setdefault("io-qd-rounds", []).append(r)
            elif name == "fio":
                benches.setdefault("fio-rounds", []).append(r)
            else:
                benches[name] = r
    io_qd(benches)
    return benches


def io_qd(benches):
    """Medians over the rounds of io-qd and fio, per configuration."""
    def median_rows(rows, key):
        groups = {}
        for r in rows:
            groups.setdefault(key(r), []).append(r)
        out = []
        for k, rs in sorted(groups.items()):
            row = dict(rs[0])
            row["kiops"] = round(statistics.median(r["kiops"] for r in rs), 2)
            row["lat_us"] = round(statistics.median(r["lat_us"] for r in rs), 2)
            row["rounds"] = len(rs)
            out.append(row)
        return out
    rounds = benches.pop("io-qd-rounds", [])
    if rounds:
        rows = [r for line in rounds for r in line["results"]]
        benches["io-qd"] = {k: rounds[0][k] for k in ("file_mb", "block", "ops", "reps")}
        benches["io-qd"]["rounds"] = len(rounds)
        benches["io-qd"]["results"] = median_rows(rows, lambda r: (r["backend"], r["cache"], r["op"], r["qd"]))
    fio = benches.pop("fio-rounds", [])
    if fio:
        benches["fio"] = {"results": median_rows(
            [{k: v for k, v in r.items() if k != "bench"} for r in fio],
            lambda r: (r["engine"], r["direct"], r["op"], r["qd"]))}


def io_row(b, **want):
    """The io-qd or fio row with these fields, if measured."""
    name = "fio" if "engine" in want else "io-qd"
    return next((r for r in b.get(name, {}).get("results", [])
                 if all(r.get(k) == v for k, v in want.items())), None)


def target(checks, ident, what, measured, goal, met):
    checks.append({"id": ident, "what": what, "measured": measured, "target": goal,
                   "met": None if measured is None else bool(met)})


def evaluate(b):
    """The issue's targets, each with the measured value and whether it is met."""
    checks = []
    cs = b.get("context-set")
    if cs:
        res = cs["results"]
        at = {(r["nodes"], r["contexts"]): r for r in res}
        r = at.get((10000, 1024))
        if r:
            target(checks, "1", "context set vs list scan, 10k nodes x 1k contexts: speedup",
                   r["speedup"], ">= 20", r["speedup"] >= 20)
        ones = [r for r in res if r["contexts"] == 1]
        if ones:
            worst = max(ones, key=lambda r: r["ratio"])
            target(checks, "1", "context set vs list scan, 1 context: cost ratio (worst over N=%d)" % worst["nodes"],
                   worst["ratio"], "<= 1.1", worst["ratio"] <= 1.1)
        # Linear in N: per-node cost flat once N is large enough that (nearly)
        # every context is present (N >= 4 x contexts).
        growth = {}
        for c in sorted({r["contexts"] for r in res}):
            pts = sorted((r["nodes"], r["aioctx_ns_per_node"]) for r in res
                         if r["contexts"] == c and r["nodes"] >= 4 * c)
            if len(pts) >= 2:
                growth[c] = pts[-1][1] / pts[0][1]
        if growth:
            worst = max(growth.values())
            target(checks, "1", "context set: per-node cost at the largest N / at the smallest N >= 4 x contexts "
                   "(worst over contexts)", round(worst, 3), "<= 1.5 (linear total)", worst <= 1.5)
    lk = b.get("lock-uncontended")
    if lk:
        target(checks, "2", "uncontended acquire+release vs recursive pthread mutex: cost ratio",
               lk["ratio"], "<= 1.2", lk["ratio"] <= 1.2)
    wk = b.get("wakeup")
    for placement in PLACEMENTS:
        p = (wk or {}).get(placement)
        if not p:
            continue
        where = placement.replace("_", " ")
        target(checks, "3", "BH ping-pong vs raw eventfd+epoll (%s): cost ratio" % where,
               p["ratio_vs_eventfd"], "<= 1.3", p["ratio_vs_eventfd"] <= 1.3)
        for other in ("libuv", "glib"):
            v = p.get("ratio_vs_" + other)
            target(checks, "3", "BH ping-pong vs %s (%s): cost ratio" % (other, where), v, "< 1 (ahead)",
                   v is not None and v < 1)
    adaptive_polling(checks, wk, b.get("handoff"))
    for placement, io in sorted(b.get("file-io", {}).items()):
        if "/" in placement:
            continue
        for op in ("read", "write"):
            v = io.get("aioctx_%s_qd32_2iot_vs_plain" % op)
            target(checks, "5", "4 KiB random %ss, QD32, two IOThreads, vs plain loop (%s): throughput"
                   % (op, placement.replace("_", " ")), v, ">= 0.8", v is not None and v >= 0.8)
    # Issue 13: io_uring and O_DIRECT.
    for op in ("read", "write"):
        a = io_row(b, backend="io_uring", cache="direct", op=op, qd=32)
        f = io_row(b, engine="io_uring", direct=1, op=op, qd=32)
        v = round(a["kiops"] / f["kiops"], 3) if a and f else None
        target(checks, "13", "O_DIRECT 4 KiB random %ss, QD32, io_uring backend vs fio io_uring: IOPS ratio" % op,
               v, ">= 0.95", v is not None and v >= 0.95)
    for op in ("read", "write"):
        a = io_row(b, backend="io_uring", cache="direct", op=op, qd=1)
        f = io_row(b, engine="psync", direct=1, op=op, qd=1)
        v = round(a["lat_us"] / f["lat_us"], 3) if a and f else None
        target(checks, "13", "O_DIRECT 4 KiB random %ss, QD1, io_uring backend vs fio psync: latency ratio" % op,
               v, "<= 1.1", v is not None and v <= 1.1)
    for placement, goal in (("one_cpu", 1.0), ("any_cpu", 1.2)):
        io = b.get("file-io", {}).get(placement, {})
        for op in ("read", "write"):
            v = io.get("aioctx_%s_qd32_2iot_vs_plain" % op)
            target(checks, "13", "page cache 4 KiB random %ss, QD32, two IOThreads, %s backend, vs plain loop "
                   "(%s): throughput" % (op, io.get("backend", "default"), placement.replace("_", " ")),
                   v, ">= %.1f" % goal, v is not None and v >= goal)
    return checks


def adaptive_polling(checks, wk, ho):
    """Issue 13, part 1: adaptive polling, against baselines of the same run."""
    cross = (wk or {}).get("cross_cpu")
    if cross:
        v = cross["ratio_vs_eventfd"]
        target(checks, "13", "BH ping-pong, two IOThreads on two CPUs, polling on, vs raw eventfd+epoll: cost ratio",
               v, "<= 0.1 (10x faster)", v <= 0.1)
    same = (wk or {}).get("same_cpu")
    if same and same.get("ratio_vs_aioctx_nopoll") is not None:
        v = same["ratio_vs_aioctx_nopoll"]
        target(checks, "13", "BH ping-pong on one CPU, polling on vs off: cost ratio (no regression)",
               v, "<= 1.1", v <= 1.1)
    idle = (wk or {}).get("idle_iothread")
    if idle:
        v = round(idle["polling_cpu_percent"], 4)
        target(checks, "13", "idle IOThread with polling on: %% of a CPU over %.0f s" % (idle["idle_ns"] / 1e9),
               v, "< 1", v < 1)
    p = (ho or {}).get("cross_cpu")
    if p:
        target(checks, "13", "handoff under poll_while on two CPUs vs mutex+condvar: cost ratio",
               p["ratio"], "<= 0.2 (5x faster)", p["ratio"] <= 0.2)
    p = (ho or {}).get("same_cpu")
    if p and p.get("ratio_vs_nopoll") is not None:
        target(checks, "13", "handoff on one CPU, polling on vs off: cost ratio (no regression)",
               p["ratio_vs_nopoll"], "<= 1.1", p["ratio_vs_nopoll"] <= 1.1)


def plot(cs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = cs["results"]
    contexts = [c for c in PLOT_CONTEXTS if any(r["contexts"] == c for r in res)]
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, c in enumerate(contexts):
        pts = sorted((r["nodes"], r["aioctx_ns_per_node"], r["list_scan_ns_per_node"]) for r in res
                     if r["contexts"] == c)
        n = [p[0] for p in pts]
        color = colors[i % len(colors)]
        what = "%d context%s" % (c, "s" * (c != 1))
        ax.plot(n, [p[1] for p in pts], "o-", color=color, label="aioctx set, " + what)
        ax.plot(n, [p[2] for p in pts], "s--", color=color, alpha=0.75, label="list scan, " + what)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nodes")
    ax.set_ylabel("time per node (ns): collect + acquire + release")
    ax.set_title("Acquiring the distinct contexts of N nodes (aioctx_set_add_many)\n"
                 "(median of %d interleaved runs; lower is better)" % cs["reps"], fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path)


def io_plot(b, path):
    """IOPS against queue depth: aioctx per backend and cache mode, and fio."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), dpi=110, sharey=False)
    series = [("aioctx io_uring, O_DIRECT", "C0", "o-", dict(backend="io_uring", cache="direct")),
              ("aioctx threads, O_DIRECT", "C1", "o-", dict(backend="threads", cache="direct")),
              ("fio io_uring, O_DIRECT", "k", "s--", dict(engine="io_uring", direct=1)),
              ("aioctx io_uring, buffered", "C2", "^-", dict(backend="io_uring", cache="buffered")),
              ("aioctx threads, buffered", "C3", "^-", dict(backend="threads", cache="buffered")),
              ("fio io_uring, buffered", "0.5", "v--", dict(engine="io_uring", direct=0))]
    for ax, op in zip(axes, ("read", "write")):
        for label, color, style, want in series:
            name = "fio" if "engine" in want else "io-qd"
            pts = sorted((r["qd"], r["kiops"]) for r in b.get(name, {}).get("results", [])
                         if r["op"] == op and all(r.get(k) == v for k, v in want.items()))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=label)
        for direct, marker in ((1, "D"),):
            r = io_row(b, engine="psync", direct=direct, op=op, qd=1)
            if r:
                ax.plot([1], [r["kiops"]], marker, color="k", label="fio psync, O_DIRECT")
        ax.set_xscale("log", base=2)
        qds = sorted({r["qd"] for r in b.get("io-qd", {}).get("results", [])})
        ax.set_xticks(qds, [str(q) for q in qds])
        ax.set_yscale("log")
        ax.set_xlabel("queue depth")
        ax.set_ylabel("kIOPS (4 KiB random %ss)" % op)
        ax.set_title("random %ss, one IOThread" % op, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    rounds = b.get("io-qd", {}).get("rounds", 0)
    fig.suptitle("IOPS against queue depth on one file (median of %d rounds, aioctx and fio alternating)"
                 % rounds, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def summary(b, checks):
    out = []
    for name, how in (("context-set", "aioctx_set_add_many"), ("context-set-per-call", "aioctx_set_add per node")):
        cs = b.get(name)
        if not cs:
            continue
        out.append("context set (%s) vs list scan, ns per node (aioctx / list scan):" % how)
        res = cs["results"]
        cs_contexts = sorted({r["contexts"] for r in res})
        out.append("| nodes | " + " | ".join("%d ctx" % c for c in cs_contexts) + " |")
        out.append("|---" * (len(cs_contexts) + 1) + "|")
        for n in sorted({r["nodes"] for r in res}):
            cells = []
            for c in cs_contexts:
                r = next((r for r in res if r["nodes"] == n and r["contexts"] == c), None)
                cells.append("%.2f / %.2f" % (r["aioctx_ns_per_node"], r["list_scan_ns_per_node"]) if r else "")
            out.append("| %d | %s |" % (n, " | ".join(cells)))
        out.append("")
    if "lock-uncontended" in b:
        lk = b["lock-uncontended"]
        out.append("lock-uncontended: " + ", ".join("%s %s" % (k, lk.get(k)) for k in
                                                     ("aioctx_ns", "pthread_recursive_ns", "ratio", "nested_aioctx_ns",
                                                      "nested_pthread_recursive_ns", "nested_ratio")))
    for name, keys in (("wakeup", ("aioctx_ns_per_round_trip", "aioctx_nopoll_ns_per_round_trip",
                                   "eventfd_ns_per_round_trip", "libuv_ns_per_round_trip",
                                   "glib_ns_per_round_trip")),
                       ("handoff", ("aioctx_ns_per_round_trip", "aioctx_nopoll_ns_per_round_trip",
                                    "pthread_ns_per_round_trip", "ratio", "ratio_vs_nopoll"))):
        for placement in PLACEMENTS:
            p = b.get(name, {}).get(placement)
            if p:
                out.append("%s (%s): %s" % (name, placement, ", ".join("%s %s" % (k, p.get(k)) for k in keys)))
    idle = b.get("wakeup", {}).get("idle_iothread")
    if idle:
        out.append("idle IOThread over %.0f s: polling on %d ns of CPU, off %d ns" % (
            idle["idle_ns"] / 1e9, idle["polling_cpu_ns"], idle["nopoll_cpu_ns"]))
    for placement, io in sorted(b.get("file-io", {}).items()):
        out.append("file-io (%s, %s) kIOPS: " % (placement, io.get("backend")) +
                   ", ".join("%s %s" % (k[:-6], v) for k, v in io.items() if k.endswith("_kiops")))
    if "io-qd" in b:
        out.append("")
        out.append("io-qd: kIOPS (mean latency us), one IOThread, 4 KiB random; fio on the same file:")
        qds = sorted({r["qd"] for r in b["io-qd"]["results"]})
        out.append("| op | who | " + " | ".join("QD%d" % q for q in qds) + " |")
        out.append("|---|---" + "|---" * len(qds) + "|")
        for op in ("read", "write"):
            rows = [("aioctx %s %s" % (bk, c), dict(backend=bk, cache=c)) for c in ("direct", "buffered")
                    for bk in ("io_uring", "threads")]
            rows += [("fio io_uring %s" % ("direct" if d else "buffered"), dict(engine="io_uring", direct=d))
                     for d in (1, 0)]
            rows += [("fio psync direct", dict(engine="psync", direct=1))]
            for label, want in rows:
                cells = []
                for q in qds:
                    r = io_row(b, op=op, qd=q, **want)
                    cells.append("%.1f (%.0f)" % (r["kiops"], r["lat_us"]) if r else "")
                if any(cells):
                    out.append("| %s | %s | %s |" % (op, label, " | ".join(cells)))
    for r in b.get("inactivate_all", []):
        out.append("inactivate_all %d nodes / %d contexts / %d writes: %.1f ms (activate %.1f ms)" % (
            r["nodes"], r["contexts"], r["writes_in_flight_per_node"], r["inactivate_ms_median"],
            r["activate_ms_median"]))
    out.append("")
    out.append("| # | target | measured | goal | met |")
    out.append("|---|---|---|---|---|")
    for c in checks:
        met = "n/a" if c["met"] is None else ("yes" if c["met"] else "**no**")
        out.append("| %s | %s | %s | %s | %s |" % (c["id"], c["what"], c["measured"], c["target"], met))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw")
    ap.add_argument("results")
    ap.add_argument("plot")
    ap.add_argument("--io-plot")
    ap.add_argument("--build", default="build-bench")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()

    benches = collect(args.raw)
    checks = evaluate(benches)
    doc = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "build": {"dir": args.build, "buildtype": "release", "c_optimization": "-O2", "rust_profile": "release"},
        "machine": machine(),
        "note": "ratio = aioctx cost / baseline cost (below 1: aioctx is faster), except file-io's *_vs_plain "
                "which is throughput (above 1: aioctx is faster), and issue 13's IOPS ratios (above 1: aioctx is faster); "
                "medians of interleaved repetitions; io-qd and fio: medians of alternating rounds",
        "targets": checks,
        "benchmarks": benches,
    }
    with open(args.results, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    if "context-set" in benches:
        plot(benches["context-set"], args.plot)
    if args.io_plot and "io-qd" in benches:
        io_plot(benches, args.io_plot)
    print(summary(benches, checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
