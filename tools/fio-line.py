#!/usr/bin/env python3
"""Turns one fio run's JSON output (stdin) into one line of tools/bench.sh's
raw results: {"bench": "fio", engine, direct, op, qd, kiops, lat_us}.

    fio ... --output-format=json | fio-line.py ENGINE DIRECT QD
"""
import json
import sys


def main():
    engine, direct, qd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    text = sys.stdin.read()
    # fio may print notes before the JSON object.
    job = json.loads(text[text.index("{"):])["jobs"][0]
    op = "read" if job["read"]["total_ios"] else "write"
    r = job[op]
    print(json.dumps({"bench": "fio", "engine": engine, "direct": direct, "op": op, "qd": qd,
                      "kiops": round(r["iops"] / 1000, 2), "lat_us": round(r["lat_ns"]["mean"] / 1000, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
