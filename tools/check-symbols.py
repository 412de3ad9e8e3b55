#!/usr/bin/env python3
"""TAP test: the shared library exports exactly the header's functions.

rustc exports every #[no_mangle] symbol, dependencies' included, so an extra
export is easy to add by accident and becomes ABI we must keep; a declared
but unexported function is a link error for every C user.

usage: check-symbols.py LIBAIOCTX_SO AIOCTX_H [--soname libaioctx.so.N]
"""
import argparse
import os
import re
import subprocess
import sys

PREFIX = "aioctx_"


def exported(lib):
    nm = os.environ.get("NM", "nm")
    out = subprocess.run([nm, "-D", "--defined-only", lib], check=True,
                         capture_output=True, text=True).stdout
    syms = set()
    for line in out.splitlines():
        parts = line.split()
        # 'A' entries are symbol-version nodes, not something a program can bind to.
        if len(parts) < 3 or parts[1] == "A":
            continue
        syms.add(parts[2].split("@")[0])
    return syms


def declared(header):
    text = open(header, encoding="utf-8").read()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r"^[ \t]*#(?:\\\n|[^\n])*", " ", text, flags=re.M)
    # A function-pointer typedef or field reads `(*name)(`, so only a
    # declaration (or a function returning a function pointer) has `name(`.
    return set(re.findall(r"\b(" + PREFIX + r"\w+)\s*\(", text))


def soname_of(lib):
    out = subprocess.run(["objdump", "-p", lib], check=True,
                         capture_output=True, text=True).stdout
    m = re.search(r"^\s*SONAME\s+(\S+)", out, re.M)
    return m.group(1) if m else None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("lib")
    p.add_argument("header")
    p.add_argument("--soname")
    a = p.parse_args()

    syms, funcs = exported(a.lib), declared(a.header)
    checks = [
        ("the header declares aioctx_ functions", not funcs, []),
        ("every exported symbol starts with " + PREFIX,
         False, sorted(s for s in syms if not s.startswith(PREFIX))),
        ("every header function is exported", False, sorted(funcs - syms)),
        ("every exported symbol is declared in the header",
         False, sorted(syms - funcs)),
    ]
    if a.soname:
        got = soname_of(a.lib)
        checks.append(("SONAME is " + a.soname, got != a.soname,
                       [] if got == a.soname else ["SONAME is %r" % got]))

    print("1..%d" % len(checks))
    failed = 0
    for i, (name, bad, items) in enumerate(checks, 1):
        bad = bad or bool(items)
        failed += bad
        print("%s %d - %s" % ("not ok" if bad else "ok", i, name))
        for item in items:
            print("#   " + item)
            # meson --print-errorlogs shows a TAP test's stderr, not its stdout.
            print("%s: %s" % (name, item), file=sys.stderr)
    print("# %d exported, %d declared" % (len(syms), len(funcs)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
