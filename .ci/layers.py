#!/usr/bin/env python3
"""Checks that stardust-runtime's modules import only downward (see .ci/layers.txt).

For every `.rs` file under stardust-runtime/src, each path `crate::a::b…` or `super::…` it
names (in `use` lines and in expressions) is resolved to a layer entry, and must be in a lower
layer than the file's own entry, or in the same module tree. Peers (same line) may import each
other, but the graph between entries must have no cycle. `lib.rs` and `mod.rs` files that only
declare and re-export modules (and define exported `macro_rules!` macros) are exempt (re-exports
and macros are the public face, not a dependency).
Exit status 1, with one line per violation, when the structure is broken.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SRC = os.path.join(ROOT, "stardust-runtime", "src")


def load_layers():
    layers = []
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "layers.txt")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                layers.append(line.split())
    rank = {}
    for i, names in enumerate(layers):
        for n in names:
            rank[n] = i
    return rank


def module_path(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    return rel


def entry_of(parts, rank):
    for k in range(len(parts), 0, -1):
        name = "::".join(parts[:k])
        if name in rank:
            return name
    return None


PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^}]*)\}")


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(l.split("//", 1)[0] for l in text.split("\n"))


def named_paths(text, own):
    """Module paths (lists of names) the file names, with super resolved."""
    out = []

    def resolve(head, tail):
        parts = [p for p in tail.split("::") if p]
        if head == "crate":
            return parts
        base = own[:]
        while parts and parts[0] == "super":
            parts = parts[1:]
            base = base[:-1]
        return base[:-1] + parts if head == "super" else parts

    for m in GROUP.finditer(text):
        base = resolve(m.group(1), m.group(2))
        for item in m.group(3).split(","):
            item = item.strip().split(" as ")[0].strip()
            if not item:
                continue
            out.append(base + ([] if item == "self" else item.split("::")))
    for m in PATH.finditer(GROUP.sub("", text)):
        out.append(resolve(m.group(1), m.group(2)))
    return out


def reexport_only(text):
    # Braces collapse from the inside out, so a `use` group or a `macro_rules!` body ends up
    # on one line with its item.
    text = strip_comments(text)
    while True:
        collapsed = re.sub(r"\{[^{}]*\}", "\0", text)
        if collapsed == text:
            break
        text = collapsed
    body = [l.strip() for l in text.split("\n")]
    body = [l for l in body if l and not l.startswith("#")]
    return all(
        re.match(r"^(pub(\([a-z]+\))? )?(mod|use) ", l) or re.match(r"^macro_rules! \w+ \0$", l)
        for l in body
    )


def main():
    rank = load_layers()
    errors = []
    edges = {}
    for dirpath, _, files in os.walk(SRC):
        for fn in sorted(files):
            if not fn.endswith(".rs"):
                continue
            path = os.path.join(dirpath, fn)
            own = module_path(path)
            with open(path) as f:
                text = f.read()
            if fn in ("lib.rs", "mod.rs") and reexport_only(text):
                continue
            me = entry_of(own, rank) if own else None
            rel = os.path.relpath(path, ROOT)
            if me is None:
                errors.append(f"{rel}: module `{'::'.join(own)}` is in no layer of .ci/layers.txt")
                continue
            for parts in named_paths(strip_comments(text), own):
                target = entry_of(parts, rank)
                if target is None or target == me:
                    continue
                if target.startswith(me + "::") or me.startswith(target + "::"):
                    errors.append(f"{rel}: imports `{'::'.join(parts)}` through its parent module (name the submodule)")
                    continue
                if rank[target] > rank[me]:
                    errors.append(f"{rel}: `{me}` (layer {rank[me]}) imports `{'::'.join(parts)}` from `{target}` (layer {rank[target]}): an upward import")
                edges.setdefault(me, set()).add(target)
    # No cycle between entries (peers of one layer included).
    state = {}

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                cyc = stack[stack.index(m):] + [m]
                errors.append("import cycle: " + " -> ".join(cyc))
            elif m not in state:
                visit(m, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [])
    for e in sorted(set(errors)):
        print(e)
    if errors:
        print(f"layers: {len(set(errors))} violation(s)", file=sys.stderr)
        return 1
    print(f"layers: ok ({len(edges)} modules, imports only downward, no cycle)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
