#!/usr/bin/env python3
"""Build the Rust library with cargo and copy it where meson expects it.

Meson calls this from a custom_target that is always stale: cargo's own
fingerprints decide whether anything needs rebuilding. Outputs are only
rewritten when their content changed, so ninja (restat) does not relink every
C program after a no-op cargo run.
"""
import argparse
import filecmp
import os
import shutil
import subprocess
import sys


def copy_if_changed(src, dst):
    if os.path.isfile(dst) and not os.path.islink(dst) and filecmp.cmp(src, dst, shallow=False):
        return
    tmp = dst + ".tmp"
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def symlink(target, link):
    if os.path.islink(link) and os.readlink(link) == target:
        return
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(target, link)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cargo", default="cargo")
    p.add_argument("--manifest-path", required=True)
    p.add_argument("--target-dir", required=True)
    p.add_argument("--profile", choices=["dev", "release"], required=True)
    p.add_argument("--soname", required=True, help="e.g. libaioctx.so.0")
    p.add_argument("--real-name", required=True, help="e.g. libaioctx.so.0.2.0")
    p.add_argument("--out-dir", required=True)
    a = p.parse_args()

    cmd = [a.cargo, "build", "--lib", "--manifest-path", a.manifest_path,
           "--target-dir", a.target_dir]
    if a.profile == "release":
        cmd.append("--release")
    lock = os.path.join(os.path.dirname(a.manifest_path), "Cargo.lock")
    if os.path.exists(lock):
        cmd.append("--locked")
    r = subprocess.run(cmd)
    if r.returncode != 0:
        return r.returncode

    built = os.path.join(a.target_dir, "debug" if a.profile == "dev" else "release")
    # The usual chain: the real file carries the full version, the SONAME
    # link is what programs load, libaioctx.so is the link-time name.
    copy_if_changed(os.path.join(built, "libaioctx.so"), os.path.join(a.out_dir, a.real_name))
    symlink(a.real_name, os.path.join(a.out_dir, a.soname))
    symlink(a.soname, os.path.join(a.out_dir, "libaioctx.so"))
    copy_if_changed(os.path.join(built, "libaioctx.a"), os.path.join(a.out_dir, "libaioctx.a"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
