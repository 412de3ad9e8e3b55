#!/usr/bin/env python3
"""Collects the benchmarks' JSON lines (from tools/bench.sh) into one JSON
file with the targets checked, draws the scaling plot of the context-set
benchmark, and prints a Markdown summary.

    bench-plot.py RAW.jsonl RESULTS.json PLOT.png [--build DIR] [--quick]
"""
import argparse
import datetime
import json
import os
import platform
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
                benches.setdefault(name, {})[r["placement"]] = r
            else:
                benches[name] = r
    return benches


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
        for op in ("read", "write"):
            v = io.get("aioctx_%s_qd32_2iot_vs_plain" % op)
            target(checks, "5", "4 KiB random %ss, QD32, two IOThreads, vs plain loop (%s): throughput"
                   % (op, placement.replace("_", " ")), v, ">= 0.8", v is not None and v >= 0.8)
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
        out.append("file-io (%s) kIOPS: " % placement +
                   ", ".join("%s %s" % (k[:-6], v) for k, v in io.items() if k.endswith("_kiops")))
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
                "which is throughput (above 1: aioctx is faster); medians of interleaved repetitions",
        "targets": checks,
        "benchmarks": benches,
    }
    with open(args.results, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    if "context-set" in benches:
        plot(benches["context-set"], args.plot)
    print(summary(benches, checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
