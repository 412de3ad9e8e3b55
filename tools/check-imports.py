#!/usr/bin/env python3
"""Fails when modules of src/ import each other in a circle.

A module is a top-level file or directory of src/ (src/context/ is one
module), except that src/block/ and src/capi/ count per file (block/node,
block/mod, ...): those two directories are where layering inside a layer
matters. The layers are meant to import only downwards, and a circle is the
first sign that one of them reaches up; see docs/DESIGN.md.

It also fails when a file other than src/lib.rs allows `unsafe_code`:
the crate root denies it and allows it for `sys` and `capi` only, and an
allow further down would quietly let unsafe code into a safe module.

Every `crate::` path, `super::` path and (in a mod.rs) child-module path in
code counts, tests included: a test that needs an upper layer belongs to
that upper layer or to tests/. Comments and string literals are skipped.
"""
import os
import re
import sys

SPLIT = ("block", "capi")


def strip(text):
    """Source without comments, string and char literals (same line count)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == '"' or text.startswith('r"', i) or text.startswith('r#"', i):
            if c == "r":
                hashes = text[i + 1:text.index('"', i)]
                end = '"' + hashes
                j = text.find(end, i + 2 + len(hashes))
                j = n if j < 0 else j + len(end)
            else:
                j = i + 1
                while j < n and text[j] != '"':
                    j += 2 if text[j] == "\\" else 1
                j += 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]) or text.startswith("'\\", i):
            j = text.find("'", i + 2) + 1
            out.append("' '")
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def unit_of(path):
    """Module path (list) and graph node of a source file under src/."""
    rel = os.path.relpath(path, "src")[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel == ["lib"]:
        rel = []
    return rel


def node_of(modpath, known):
    """Graph node for a module path: top-level, or per file in SPLIT dirs."""
    if not modpath:
        return "lib"
    top = modpath[0]
    if top in SPLIT:
        if len(modpath) > 1 and tuple(modpath[:2]) in known:
            return top + "/" + modpath[1]
        return top + "/mod"
    return top


def use_tree(text, at):
    """Paths named by the `{...}` use group opening at text[at]."""
    depth, j = 0, at
    while j < len(text):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            break
        j += 1
    body = text[at + 1:j]
    out, item, depth, k = [], "", 0, 0
    while k <= len(body):
        c = body[k] if k < len(body) else ","
        if c == "{":
            if depth == 0:
                head = [x for x in item.strip().rstrip(":").split("::") if x]
                out += [head + t for t in use_tree(body, k)]
                item = None
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 0:
            if item is not None and item.strip():
                out.append(item.strip().split(" as ")[0].strip().split("::"))
            item = ""
        elif depth == 0 and item is not None:
            item += c
        k += 1
    return [[x for x in p if x not in ("self", "*")] for p in out]


def main():
    files = []
    for root, _, names in os.walk("src"):
        files += [os.path.join(root, f) for f in names if f.endswith(".rs")]
    known = {tuple(unit_of(f)) for f in files}
    edges = {}
    where = {}
    bad_allows = []
    for f in sorted(files):
        base = unit_of(f)
        src = node_of(base, known)
        text = strip(open(f, encoding="utf-8").read())
        if base and re.search(r"allow\s*\([^)]*\bunsafe_code\b", text):
            bad_allows.append(f)
        children = set(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text, re.M))
        # The inline `mod x { ... }` blocks open at each offset: `super::`
        # inside one is relative to it.
        opens, stack, depth = [], [], 0
        for m in re.finditer(r"\bmod\s+(\w+)\s*\{|\{|\}", text):
            if m.group(0) == "}":
                depth -= 1
                if stack and stack[-1][0] == depth:
                    stack.pop()
                    opens.append((m.end(), [n for _, n in stack]))
            elif m.group(0) == "{":
                depth += 1
            else:
                stack.append((depth, m.group(1)))
                depth += 1
                opens.append((m.end(), [n for _, n in stack]))

        def inline_at(pos):
            current = []
            for at, mods in opens:
                if at > pos:
                    break
                current = mods
            return base + current

        refs = []
        for m in re.finditer(r"\b(crate|super|self)((?:::\w+)*)(::\{)?", text):
            head, rest = m.group(1), m.group(2).split("::")[1:]
            if not rest and not m.group(3):
                continue
            inline = inline_at(m.start())
            if head == "crate":
                prefix = rest
            elif head == "self":
                prefix = inline + rest
            else:
                up = inline[:-1]
                while rest and rest[0] == "super":
                    up, rest = up[:-1], rest[1:]
                prefix = up + rest
            tails = [[]]
            if m.group(3):
                tails = use_tree(text, m.end() - 1)
            line = text.count("\n", 0, m.start()) + 1
            refs += [(prefix + t, line) for t in tails]
        if children:
            for m in re.finditer(r"\buse\s+(\w+)::", text):
                if m.group(1) in children and inline_at(m.start()) == base:
                    refs.append((base + [m.group(1)], text.count("\n", 0, m.start()) + 1))
        for target, line in refs:
            # Drop trailing items: keep the longest prefix naming a module.
            while len(target) > 1 and tuple(target) not in known:
                target = target[:-1]
            if target and (target[0],) not in known:
                target = []
            dst = node_of(target, known)
            if dst != src and dst != "lib":
                edges.setdefault(src, set()).add(dst)
                where.setdefault((src, dst), "%s:%d" % (f, line))

    # Tarjan's strongly connected components: every one bigger than a node
    # is a circle.
    index, low, on, st, comps, counter = {}, {}, set(), [], [], [0]
    nodes = sorted(set(edges) | {d for ds in edges.values() for d in ds})

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        st.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = st.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    if "-v" in sys.argv:
        for v in nodes:
            print("%s -> %s" % (v, ", ".join(sorted(edges.get(v, ())))))
    for f in bad_allows:
        print("%s allows unsafe_code: only src/lib.rs decides where unsafe "
              "code may be (sys and capi)" % f)
    if not comps:
        print("no import circle among %d modules of src/" % len(nodes))
        return 1 if bad_allows else 0
    for comp in comps:
        print("import circle among: " + ", ".join(comp))
        for a in comp:
            for b in sorted(edges.get(a, ())):
                if b in comp:
                    print("  %s -> %s  (%s)" % (a, b, where[(a, b)]))
    return 1


if __name__ == "__main__":
    os.chdir(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "-v" else
             os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    sys.exit(main())
