#!/usr/bin/env python3
"""Lists and counts krcu's public API from rustdoc's JSON output (the
counts at the top of docs/public-api.txt; the listing there is
`cargo +nightly public-api -p krcu -ss`).

  cargo +nightly rustdoc -p krcu --lib -- -Z unstable-options --output-format json
  scripts/public-api.py target/doc/krcu.json > /tmp/paths.txt   # counts on stderr

One line per public path: `kind path`. Kinds: mod, struct, enum, trait,
function, constant, type_alias, field, variant, method (inherent, public),
assoc-assoc_const, trait-item. An item re-exported in two places (the crate
root and its module) has two paths. Trait implementations are not listed.
Rustdoc's JSON leaves out `#[doc(hidden)]` items, so they are not listed
either, nor is the `HasRcuHead` derive (a re-export from krcu-derive). The
summary (paths per kind, items per kind counted once, root items) goes to
stderr.
"""

import collections
import json
import sys


def main(path):
    doc = json.load(open(path))
    index = doc["index"]
    paths = set()
    items = {}
    walked = set()

    def kind_of(item):
        return next(iter(item["inner"]))

    def add(kind, p, item_id):
        paths.add((kind, p))
        items.setdefault(str(item_id), kind)

    def walk(item_id, p):
        item = index.get(str(item_id))
        if item is None:
            return  # from another crate
        kind = kind_of(item)
        if kind == "module":
            if (item_id, p) in walked:
                return
            walked.add((item_id, p))
            if p != "krcu":
                paths.add(("mod", p))
            for child_id in item["inner"]["module"]["items"]:
                child = index.get(str(child_id))
                if child is None or child["visibility"] != "public":
                    continue
                child_kind = kind_of(child)
                if child_kind == "use":
                    use = child["inner"]["use"]
                    if use["id"] is not None and not use["is_glob"]:
                        walk(use["id"], p + "::" + use["name"])
                elif child_kind != "impl":
                    walk(child_id, p + "::" + child["name"])
            return
        add(kind, p, item_id)
        inner = item["inner"][kind]
        if not isinstance(inner, dict):
            return
        if kind == "enum":
            for v in inner.get("variants", []):
                add("variant", p + "::" + index[str(v)]["name"], v)
        if kind == "struct":
            fields = inner.get("kind", {})
            if isinstance(fields, dict) and "plain" in fields:
                for f in fields["plain"]["fields"]:
                    if index[str(f)]["visibility"] == "public":
                        add("field", p + "::" + index[str(f)]["name"], f)
        if kind == "trait":
            for m in inner.get("items", []):
                add("trait-item", p + "::" + index[str(m)]["name"], m)
        for impl_id in inner.get("impls", []):
            impl = index[str(impl_id)]["inner"]["impl"]
            if impl.get("trait") is not None:
                continue
            for m in impl["items"]:
                member = index[str(m)]
                if member["visibility"] == "public":
                    mk = kind_of(member)
                    add("method" if mk == "function" else "assoc-" + mk, p + "::" + member["name"], m)

    walk(doc["root"], "krcu")
    for kind, p in sorted(paths, key=lambda x: (x[1], x[0])):
        print(f"{kind} {p}")
    per_path = collections.Counter(k for k, _ in paths)
    per_item = collections.Counter(items.values())
    root = sorted(p for k, p in paths if p.count("::") == 1 and k != "mod")
    print("# paths:", dict(sorted(per_path.items())), "total", len(paths), file=sys.stderr)
    print("# items:", dict(sorted(per_item.items())), "total", len(items), file=sys.stderr)
    print(f"# root items ({len(root)}):", " ".join(root), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/doc/krcu.json")
