#!/usr/bin/env python3
"""Prints a crate's public API, one sorted line per item, from rustdoc's JSON
output (`cargo +nightly rustdoc -- -Z unstable-options --output-format json`).

Lines name the item's public path and kind, with function signatures, struct
fields, enum variants, `#[non_exhaustive]`, trait items and the traits a type
implements (auto traits included, since losing Send or Sync breaks callers).
Two listings differ exactly when the public surface changed.
"""
import json
import sys

doc = json.load(open(sys.argv[1]))
index = doc["index"]
out = set()


def ty(t):
    if t is None:
        return "()"
    (k, v), = t.items()
    if k == "resolved_path":
        return canonical(v) + args(v.get("args"))
    if k == "primitive":
        return v
    if k == "generic":
        return v
    if k == "borrowed_ref":
        life = (v["lifetime"] + " ") if v.get("lifetime") else ""
        return "&" + life + ("mut " if v["is_mutable"] else "") + ty(v["type"])
    if k == "slice":
        return "[" + ty(v) + "]"
    if k == "array":
        return "[" + ty(v["type"]) + "; " + v["len"] + "]"
    if k == "tuple":
        return "(" + ", ".join(ty(x) for x in v) + ")"
    if k == "raw_pointer":
        return ("*mut " if v["is_mutable"] else "*const ") + ty(v["type"])
    if k == "impl_trait":
        return "impl " + " + ".join(bound(b) for b in v)
    if k == "dyn_trait":
        return "dyn " + " + ".join(x["trait"]["path"] + args(x["trait"].get("args")) for x in v["traits"])
    if k == "qualified_path":
        tr = v.get("trait")
        return "<" + ty(v["self_type"]) + (" as " + tr["path"] if tr else "") + ">::" + v["name"]
    if k == "function_pointer":
        return "fn(" + ", ".join(ty(x[1]) for x in v["sig"]["inputs"]) + ") -> " + ty(v["sig"]["output"])
    return k


def canonical(v):
    # The full path where rustdoc knows it, so moving an import or a `use`
    # does not change the listing; the written path otherwise.
    p = doc["paths"].get(str(v.get("id")))
    return "::".join(p["path"]) if p else v["path"]


# Traits that only exist on nightly and vary with its version.
UNSTABLE_TRAITS = {"Freeze", "StructuralPartialEq", "UnsafeUnpin"}


def args(a):
    if not a:
        return ""
    if "angle_bracketed" in a:
        parts = []
        for x in a["angle_bracketed"]["args"]:
            (k, v), = x.items()
            parts.append(ty(v) if k == "type" else (v if isinstance(v, str) else json.dumps(v)))
        for c in a["angle_bracketed"].get("constraints", []):
            b = c["binding"]
            parts.append(c["name"] + (" = " + ty(b["equality"]["type"]) if "equality" in b and "type" in b["equality"] else ""))
        return "<" + ", ".join(parts) + ">" if parts else ""
    if "parenthesized" in a:
        p = a["parenthesized"]
        return "(" + ", ".join(ty(x) for x in p["inputs"]) + ") -> " + ty(p.get("output"))
    return ""


def bound(b):
    if "trait_bound" in b:
        t = b["trait_bound"]["trait"]
        return t["path"] + args(t.get("args"))
    if "outlives" in b:
        return b["outlives"]
    return "?"


def generics(g):
    ps = []
    for p in g["params"]:
        k = p["kind"]
        if "type" in k:
            bs = " + ".join(bound(b) for b in k["type"]["bounds"])
            ps.append(p["name"] + (": " + bs if bs else ""))
        elif "const" in k:
            ps.append("const " + p["name"] + ": " + ty(k["const"]["type"]))
        else:
            ps.append(p["name"])
    return "<" + ", ".join(ps) + ">" if ps else ""


def sig(name, f):
    s = f["sig"]
    h = f["header"]
    pre = ("const " if h["is_const"] else "") + ("async " if h["is_async"] else "") + ("unsafe " if h["is_unsafe"] else "")
    ins = ", ".join((n + ": " if n != "self" else "") + ty(t) for n, t in s["inputs"])
    return f"{pre}fn {name}{generics(f['generics'])}({ins}) -> {ty(s['output'])}"


def attrs(item):
    return "#[non_exhaustive] " if "non_exhaustive" in item.get("attrs", []) else ""


def impls(path, ids):
    for i in ids:
        imp = index[str(i)]["inner"]["impl"]
        if imp.get("blanket_impl"):
            continue
        tr = imp.get("trait")
        if tr:
            if tr["path"] in UNSTABLE_TRAITS:
                continue
            neg = "!" if imp.get("is_negative") else ""
            out.add(f"{path}: impl {neg}{tr['path']}{args(tr.get('args'))}")
            continue
        for m in imp["items"]:
            it = index[str(m)]
            if it["visibility"] != "public":
                continue
            walk(it, path)


def walk(item, prefix, seen=None):
    seen = seen if seen is not None else set()
    if item["id"] in seen:
        return
    seen.add(item["id"])
    (kind, inner), = item["inner"].items()
    name = item.get("name")
    path = f"{prefix}::{name}" if name else prefix
    if kind == "module":
        out.add(f"{path}: mod")
        for c in inner["items"]:
            child = index.get(str(c))
            if child and child["visibility"] == "public":
                walk(child, path, seen)
    elif kind == "use":
        tgt = index.get(str(inner["id"])) if inner.get("id") is not None else None
        alias = inner["name"]
        if inner.get("is_glob"):
            if tgt and "module" in tgt["inner"]:
                for c in tgt["inner"]["module"]["items"]:
                    child = index.get(str(c))
                    if child and child["visibility"] == "public":
                        walk(child, prefix, seen)
            else:
                out.add(f"{prefix}::*: use {inner['source']}")
        elif tgt:
            walk(dict(tgt, name=alias), prefix, seen)
        else:
            out.add(f"{prefix}::{alias}: use {inner['source']}")
    elif kind == "struct":
        out.add(f"{path}: {attrs(item)}struct{generics(inner['generics'])}")
        k = inner["kind"]
        if "plain" in k:
            for fid in k["plain"]["fields"]:
                fld = index[str(fid)]
                if fld["visibility"] == "public":
                    out.add(f"{path}.{fld['name']}: {ty(fld['inner']['struct_field'])}")
            if k["plain"]["has_stripped_fields"]:
                out.add(f"{path}: has private fields")
        elif "tuple" in k:
            fs = ["_" if f is None else ty(index[str(f)]["inner"]["struct_field"]) for f in k["tuple"]]
            out.add(f"{path}: tuple({', '.join(fs)})")
        impls(path, inner["impls"])
    elif kind == "enum":
        out.add(f"{path}: {attrs(item)}enum{generics(inner['generics'])}")
        for vid in inner["variants"]:
            v = index[str(vid)]
            vk = v["inner"]["variant"]["kind"]
            if vk == "plain":
                out.add(f"{path}::{v['name']}: {attrs(v)}variant")
            elif "tuple" in vk:
                fs = ["_" if f is None else ty(index[str(f)]["inner"]["struct_field"]) for f in vk["tuple"]]
                out.add(f"{path}::{v['name']}: {attrs(v)}variant({', '.join(fs)})")
            else:
                for fid in vk["struct"]["fields"]:
                    fld = index[str(fid)]
                    out.add(f"{path}::{v['name']}.{fld['name']}: {ty(fld['inner']['struct_field'])}")
                out.add(f"{path}::{v['name']}: {attrs(v)}variant {{..}}")
        impls(path, inner["impls"])
    elif kind == "function":
        out.add(f"{path}: {sig(name, inner)}")
    elif kind == "trait":
        out.add(f"{path}: trait{generics(inner['generics'])}")
        for m in inner["items"]:
            it = index[str(m)]
            (mk, mi), = it["inner"].items()
            if mk == "function":
                out.add(f"{path}::{it['name']}: {sig(it['name'], mi)}{' (provided)' if mi['has_body'] else ''}")
            else:
                out.add(f"{path}::{it['name']}: {mk}")
    elif kind == "type_alias":
        out.add(f"{path}: type{generics(inner['generics'])} = {ty(inner['type'])}")
    elif kind == "constant":
        out.add(f"{path}: const {ty(inner['type'])} = {inner['const'].get('expr')}")
    elif kind == "static":
        out.add(f"{path}: static {ty(inner['type'])}")
    elif kind in ("macro", "proc_macro"):
        out.add(f"{path}: macro")
    elif kind == "assoc_const":
        out.add(f"{path}: const {ty(inner['type'])}")
    elif kind == "assoc_type":
        out.add(f"{path}: type")
    else:
        out.add(f"{path}: {kind}")


walk(index[str(doc["root"])], "")
for line in sorted(out):
    print(line.lstrip(":"))
