#!/usr/bin/env python3
"""Prints the system libraries a Rust staticlib needs when linked into a C
program (`-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc` on glibc), as rustc
reports them with --print native-static-libs, for the Libs.private of the
pkg-config file and the static meson dependency.

It compiles an empty staticlib: what libaioctx.a needs from the system is
what the standard library needs (its own dependencies link no native
library); the install test links a program statically with the result, so a
new need shows up as a failure there.

usage: native-static-libs.py RUSTC [rustc args...]
"""
import os
import subprocess
import sys
import tempfile

PREFIX = "native-static-libs:"


def main():
    rustc = sys.argv[1:] or ["rustc"]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "empty.rs")
        open(src, "w").close()
        r = subprocess.run(rustc + ["--crate-type", "staticlib", "--crate-name", "empty",
                                    "--print", "native-static-libs", "--out-dir", tmp, src],
                           capture_output=True, text=True)
    # rustc prints the list as a note on stderr (or stdout, with --print=...=FILE
    # semantics of newer releases); look in both.
    for line in (r.stderr + r.stdout).splitlines():
        if PREFIX in line:
            print(line.split(PREFIX, 1)[1].strip())
            return 0
    sys.stderr.write(r.stderr)
    sys.stderr.write("native-static-libs.py: rustc did not report native-static-libs\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
