#!/usr/bin/env python3
"""Lists the import circles between the files of krcu/src.

For each .rs file it finds the other files of the crate it uses: every
`crate::`, `super::`, `self::` path and every path that starts with the
name of a child module, in `use` items and in code, with `use` trees
(`{a, b::c}`) expanded. A path is resolved to the file that defines the
item: the longest module prefix gives a file; if that file only
re-exports the item (`pub use child::Item` or `pub use child::*`), the
re-export is followed to the file that defines it.

Re-exports themselves (`pub use` / `pub(crate) use` / `pub(super) use`)
are not counted as uses: they are a module's facade, not something its
code depends on. Comments and string literals are ignored. Inline
`mod name { ... }` blocks (unit tests) count as part of their file.

A circle is a strongly connected set of files (A uses B and B uses A,
directly or around a loop). The script prints each circle with the
edges inside it, and exits 1 if there is one outside the excluded
directories.

What it does not see: method calls (`x.f()` names no path), so the
`impl` blocks of one type spread over several files (`slab/alloc.rs`,
`slab/free.rs`, ... of `SlabCache`) are not counted as using each other;
they are one type. A `mod tests;` declaration is not a use either, so a
unit-test file (`rcu/reader/tests.rs`) may use what uses its parent.

  scripts/import-cycles.py                 # circles (exit 1 if any)
  scripts/import-cycles.py --all           # every circle, excluded paths too
  scripts/import-cycles.py --edges         # also every file's uses
  scripts/import-cycles.py --no-tests      # ignore `#[cfg(test)]` modules
  scripts/import-cycles.py --root DIR      # another tree (default krcu/src)
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "krcu", "src")
# `kvfree_steal` is kvfree/steal.rs again, under its loom-only name.
EXCLUDED = ["kvfree_steal"]


def strip_comments_and_strings(text):
    """Replaces comments and string/char literals with spaces (keeps lines)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + len(m.group(0)))
            j = n if end < 0 else end + 1 + len(m.group(1))
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", text[i:j + 1]))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\''), not a lifetime ('a).
            m = re.match(r"'(\\.[^']*|[^\\'])'", text[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


class File:
    def __init__(self, rel, modpath, text):
        self.rel = rel
        self.modpath = modpath  # tuple, () for the crate root
        self.code = strip_comments_and_strings(text)
        self.children = set()  # file modules declared here
        self.reexports = {}  # name -> (path segments relative to this module)
        self.globs = []  # child paths re-exported with `*`
        self.uses = set()


def read_files():
    files = {}
    declared_paths = {}
    for dirpath, _, names in os.walk(ROOT):
        for name in names:
            if not name.endswith(".rs"):
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, ROOT).replace(os.sep, "/")
            with open(full, encoding="utf-8") as f:
                text = f.read()
            files[rel] = text
    return files


def module_of(rel):
    parts = rel[:-3].split("/")
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def parse_use_tree(s):
    """Expands `a::{b, c::{d, e}}` into [[a,b],[a,c,d],[a,c,e]]."""
    s = re.sub(r"\s+as\s+", "@", s)  # `name as alias` -> `name@alias`
    s = re.sub(r"\s+", "", s)

    def parse(s, i):
        # returns (list of paths, new index)
        prefix = []
        cur = ""
        while i < len(s):
            c = s[i]
            if s.startswith("::", i):
                prefix.append(cur)
                cur = ""
                i += 2
            elif c == "{":
                paths = []
                i += 1
                while True:
                    sub, i = parse(s, i)
                    paths.extend(sub)
                    if i < len(s) and s[i] == ",":
                        i += 1
                        if i < len(s) and s[i] == "}":
                            i += 1
                            break
                        continue
                    if i < len(s) and s[i] == "}":
                        i += 1
                    break
                return [prefix + p for p in paths], i
            elif c in ",}":
                break
            else:
                cur += c
                i += 1
        if cur:
            prefix.append(cur)
        return [prefix], i

    paths, _ = parse(s, 0)
    return [[seg for seg in p if seg] for p in paths]


USE_RE = re.compile(r"(?m)^[ \t]*((?:pub(?:\([\w: ]+\))?[ \t]+)?)use[ \t]+([^;]+);")
ITEM_RE = r"\b(?:fn|struct|enum|trait|type|const|static|union|mod|macro_rules!)\s+{}\b"


def main():
    global ROOT
    args = sys.argv[1:]
    if "--root" in args:
        ROOT = args[args.index("--root") + 1]
    show_all = "--all" in args
    show_edges = "--edges" in args
    no_tests = "--no-tests" in args

    texts = read_files()
    alternatives = {}  # file -> the other files of its cfg-chosen module
    files = {}
    by_mod = {}
    for rel, text in texts.items():
        mp = module_of(rel)
        f = File(rel, mp, text)
        files[rel] = f
        by_mod[mp] = f
    # `#[path = "..."]` modules declared in lib.rs (kvfree_steal).
    for rel, f in files.items():
        for m in re.finditer(r'#\[path\s*=\s*"([^"]+)"\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([\w: ]+\))?\s+)?mod\s+(\w+)', texts[rel]):
            target = os.path.normpath(os.path.join(os.path.dirname(rel), m.group(1))).replace(os.sep, "/")
            if target in files:
                by_mod.setdefault(f.modpath + (m.group(2),), files[target])
        # `#[cfg_attr(cfg, path = "a.rs")] #[cfg_attr(not(cfg), path = "b.rs")]
        # mod imp;`: one module, two files; a use of it uses both.
        for m in re.finditer(r'((?:#\[cfg_attr\([^\]]*path\s*=\s*"[^"]+"\)\]\s*)+)(?:pub(?:\([\w: ]+\))?\s+)?mod\s+(\w+)', texts[rel]):
            targets = []
            for t in re.findall(r'path\s*=\s*"([^"]+)"', m.group(1)):
                t = os.path.normpath(os.path.join(os.path.dirname(rel), t)).replace(os.sep, "/")
                if t in files:
                    targets.append(t)
            if targets:
                by_mod.setdefault(f.modpath + (m.group(2),), files[targets[0]])
                alternatives[targets[0]] = targets[1:]

    if no_tests:
        for f in files.values():
            f.code = drop_test_modules(f.code)

    for f in files.values():
        for m in re.finditer(r"(?m)^[ \t]*(?:pub(?:\([\w: ]+\))?[ \t]+)?mod[ \t]+(\w+)[ \t]*;", f.code):
            f.children.add(m.group(1))
        for m in USE_RE.finditer(f.code):
            if not m.group(1):
                continue
            for p in parse_use_tree(m.group(2)):
                if not p:
                    continue
                if p[-1] == "*":
                    f.globs.append(p[:-1])
                else:
                    name, _, alias = p[-1].partition("@")
                    f.reexports[alias or name] = p[:-1] + [name]

    def resolve(base_mod, segs, depth=0):
        """Resolves a path used in module base_mod to a file rel, or None."""
        if depth > 20 or not segs:
            return None
        segs = list(segs)
        mod = list(base_mod)
        if segs[0] == "crate":
            mod, segs = [], segs[1:]
        elif segs[0] in ("super", "self"):
            while segs and segs[0] in ("super", "self"):
                if segs[0] == "super":
                    if not mod:
                        return None
                    mod = mod[:-1]
                segs = segs[1:]
        elif segs[0] == "krcu":  # `extern crate self as krcu`
            mod, segs = [], segs[1:]
        else:
            f = by_mod.get(tuple(mod))
            if f is None or segs[0] not in f.children:
                return None
        # Longest prefix that is a file module.
        while segs and tuple(mod + [segs[0]]) in by_mod:
            mod.append(segs[0])
            segs = segs[1:]
        f = by_mod[tuple(mod)]
        if not segs:
            return f.rel
        name = segs[0]
        if name in f.reexports and not re.search(ITEM_RE.format(re.escape(name)), f.code):
            target = f.reexports[name]
            r = resolve(tuple(mod), target, depth + 1)
            return r or f.rel
        if not re.search(ITEM_RE.format(re.escape(name)), f.code):
            for g in f.globs:
                r = resolve(tuple(mod), g, depth + 1)
                if r and re.search(ITEM_RE.format(re.escape(name)), files[r].code):
                    return resolve(tuple(mod), g + [name], depth + 1) or r
        return f.rel

    edges = {rel: set() for rel in files}
    why = {}
    for f in files.values():
        code = f.code
        # Inline modules shift `super::`; track them by brace depth.
        paths = []
        # `use` items that are not re-exports.
        for m in USE_RE.finditer(code):
            if m.group(1):
                continue
            base = inline_module_at(code, m.start(), f.modpath)
            for p in parse_use_tree(m.group(2)):
                if p:
                    p[-1] = p[-1].split("@")[0]
                if p and p[-1] in ("*", "self"):
                    p = p[:-1]
                paths.append((base, p))
        # Paths in code.
        code_no_use = USE_RE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), code)
        for m in re.finditer(r"(?<![\w:])((?:crate|super|self|krcu|[a-z_][a-z0-9_]*)(?:::[A-Za-z_]\w*)+)", code_no_use):
            segs = m.group(1).split("::")
            base = inline_module_at(code_no_use, m.start(), f.modpath)
            paths.append((base, segs))
        for base, p in paths:
            r = resolve(base, p)
            for r in [r] + alternatives.get(r, []) if r else []:
                if r != f.rel:
                    edges[f.rel].add(r)
                    why.setdefault((f.rel, r), "::".join(p))

    def excluded(rel):
        return any(rel.startswith(e) or e in rel for e in EXCLUDED)

    if show_edges:
        for rel in sorted(edges):
            print(f"{rel}: {', '.join(sorted(edges[rel])) or '-'}")
        print()

    cycles = [c for c in tarjan(edges) if len(c) > 1]
    bad = 0
    for c in sorted(cycles, key=lambda c: sorted(c)):
        inner = all(excluded(r) for r in c)
        if inner and not show_all:
            continue
        if not inner:
            bad += 1
        tag = " (kvfree, excluded)" if inner else ""
        print(f"circle of {len(c)} files{tag}: {' '.join(sorted(c))}")
        members = set(c)
        for a in sorted(c):
            for b in sorted(edges[a] & members):
                print(f"    {a} -> {b}   ({why[(a, b)]})")
    skipped = sum(1 for c in cycles if all(excluded(r) for r in c))
    print(f"{bad} circle(s) outside {', '.join(EXCLUDED)}" + (f"; {skipped} inside (--all shows them)" if skipped and not show_all else ""))
    sys.exit(1 if bad else 0)


def inline_module_at(code, pos, filemod):
    """The module path at byte pos, counting inline `mod name {` blocks."""
    stack = []  # (name, depth at which it opened)
    depth = 0
    for m in re.finditer(r"\bmod\s+(\w+)\s*\{|[{}]", code[:pos]):
        t = m.group(0)
        if t == "{":
            depth += 1
        elif t == "}":
            depth -= 1
            if stack and stack[-1][1] == depth:
                stack.pop()
        else:
            stack.append((m.group(1), depth))
            depth += 1
    return tuple(filemod) + tuple(name for name, _ in stack)


def drop_test_modules(code):
    out = code
    for m in list(re.finditer(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*mod\s+\w+\s*\{", code))[::-1]:
        depth, j = 1, m.end()
        while j < len(code) and depth:
            if code[j] == "{":
                depth += 1
            elif code[j] == "}":
                depth -= 1
            j += 1
        out = out[:m.start()] + re.sub(r"[^\n]", " ", out[m.start():j]) + out[j:]
    return out


def tarjan(graph):
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    main()
