#!/usr/bin/env python3
"""Renders a crate's public API from rustdoc JSON, one item per line, sorted.

Used by .ci/public-api (issue 17): the rendered list is committed as
docs/public-api.txt, so that every change to the public API shows up as a
diff in review, and CI fails when the list and the code disagree.

Each public item appears under every public path it is reachable by (a
re-export is a path users can name). Inherent methods and fields are listed
under their type; trait impls as `impl Trait for Type`, except blanket and
auto-trait impls, which say nothing about this crate.

Usage: public_api.py <crate.json>
"""

import json
import sys

AUTO_TRAITS = {"Send", "Sync", "Unpin", "UnwindSafe", "RefUnwindSafe", "Freeze"}


class Api:
    def __init__(self, doc):
        self.doc = doc
        self.index = doc["index"]
        self.paths = doc["paths"]
        self.lines = set()
        # id -> every public path it is reachable by (filled by a first walk).
        self.public = {}

    def item(self, id_):
        return self.index.get(str(id_))

    # -- types ---------------------------------------------------------------

    def path_name(self, p):
        # A local item by the shortest public path users can name it by;
        # another crate's by its canonical path. Never the path as written
        # at the use site, so moving code between private modules does not
        # change the listing.
        id_ = p.get("id")
        if id_ in self.public:
            out = min(self.public[id_], key=lambda q: (len(q), q))
        else:
            known = self.paths.get(str(id_))
            out = "::".join(known["path"]) if known and known.get("crate_id", 0) != 0 else p["path"]
        if p.get("args"):
            out += self.args(p["args"])
        return out

    def args(self, a):
        if "angle_bracketed" in a:
            ab = a["angle_bracketed"]
            parts = []
            for arg in ab["args"]:
                if "type" in arg:
                    parts.append(self.ty(arg["type"]))
                elif "lifetime" in arg:
                    parts.append(arg["lifetime"])
                elif "const" in arg:
                    parts.append(str(arg["const"].get("expr", "_")))
                else:
                    parts.append("_")
            for c in ab.get("constraints", []):
                binding = c["binding"]
                if "equality" in binding:
                    eq = binding["equality"]
                    rhs = self.ty(eq["type"]) if "type" in eq else str(eq.get("constant", "_"))
                    parts.append(f"{c['name']} = {rhs}")
                else:
                    parts.append(f"{c['name']}: {self.bounds(binding.get('constraint', []))}")
            return "<" + ", ".join(parts) + ">" if parts else ""
        if "parenthesized" in a:
            pa = a["parenthesized"]
            out = "(" + ", ".join(self.ty(t) for t in pa["inputs"]) + ")"
            if pa.get("output"):
                out += " -> " + self.ty(pa["output"])
            return out
        return ""

    def bounds(self, bs):
        parts = []
        for b in bs:
            if "trait_bound" in b:
                tb = b["trait_bound"]
                prefix = "?" if tb.get("modifier") == "maybe" else ""
                parts.append(prefix + self.path_name(tb["trait"]))
            elif "outlives" in b:
                parts.append(b["outlives"])
            else:
                parts.append("use<..>")
        return " + ".join(parts)

    def ty(self, t):
        if t is None:
            return "()"
        (kind, v), = t.items()
        if kind == "resolved_path":
            return self.path_name(v)
        if kind == "generic":
            return v
        if kind == "primitive":
            return v
        if kind == "tuple":
            return "(" + ", ".join(self.ty(x) for x in v) + ("," if len(v) == 1 else "") + ")"
        if kind == "slice":
            return "[" + self.ty(v) + "]"
        if kind == "array":
            return f"[{self.ty(v['type'])}; {v['len']}]"
        if kind == "borrowed_ref":
            lt = (v["lifetime"] + " ") if v.get("lifetime") else ""
            mut = "mut " if v["is_mutable"] else ""
            return f"&{lt}{mut}{self.ty(v['type'])}"
        if kind == "raw_pointer":
            return ("*mut " if v["is_mutable"] else "*const ") + self.ty(v["type"])
        if kind == "impl_trait":
            return "impl " + self.bounds(v)
        if kind == "dyn_trait":
            out = "dyn " + " + ".join(self.path_name(x["trait"]) for x in v["traits"])
            if v.get("lifetime"):
                out += " + " + v["lifetime"]
            return out
        if kind == "qualified_path":
            trait = self.path_name(v["trait"]) if v.get("trait") else ""
            base = f"<{self.ty(v['self_type'])} as {trait}>" if trait else self.ty(v["self_type"])
            return f"{base}::{v['name']}"
        if kind == "function_pointer":
            sig = v["sig"]
            ins = ", ".join(self.ty(x[1]) for x in sig["inputs"])
            out = f" -> {self.ty(sig['output'])}" if sig.get("output") else ""
            return f"fn({ins}){out}"
        if kind == "infer":
            return "_"
        return kind

    def generics(self, g):
        params = []
        for p in g.get("params", []):
            k = p["kind"]
            if "lifetime" in k:
                params.append(p["name"])
            elif "type" in k:
                if k["type"].get("is_synthetic"):
                    continue
                b = self.bounds(k["type"]["bounds"])
                params.append(p["name"] + (f": {b}" if b else ""))
            elif "const" in k:
                params.append(f"const {p['name']}: {self.ty(k['const']['type'])}")
        return "<" + ", ".join(params) + ">" if params else ""

    def where_clause(self, g):
        preds = []
        for w in g.get("where_predicates", []):
            if "bound_predicate" in w:
                bp = w["bound_predicate"]
                preds.append(f"{self.ty(bp['type'])}: {self.bounds(bp['bounds'])}")
            elif "lifetime_predicate" in w:
                lp = w["lifetime_predicate"]
                preds.append(f"{lp['lifetime']}: {' + '.join(lp['outlives'])}")
            elif "eq_predicate" in w:
                preds.append("_ = _")
        return (" where " + ", ".join(preds)) if preds else ""

    def fn_sig(self, name, f):
        h = f["header"]
        quals = ("const " if h["is_const"] else "") + ("async " if h["is_async"] else "") + (
            "unsafe " if h["is_unsafe"] else ""
        )
        ins = []
        for arg_name, t in f["sig"]["inputs"]:
            if arg_name == "self":
                rendered = self.ty(t)
                ins.append({"Self": "self", "&Self": "&self", "&mut Self": "&mut self"}.get(rendered, f"self: {rendered}"))
            else:
                ins.append(f"{arg_name}: {self.ty(t)}")
        out = f" -> {self.ty(f['sig']['output'])}" if f["sig"].get("output") else ""
        return f"{quals}fn {name}{self.generics(f['generics'])}({', '.join(ins)}){out}{self.where_clause(f['generics'])}"

    # -- items ---------------------------------------------------------------

    def emit(self, line):
        self.lines.add(line)

    def walk_module(self, id_, path, seen):
        if (id_, path) in seen:
            return
        seen.add((id_, path))
        self.emit(f"pub mod {path}")
        module = self.item(id_)["inner"]["module"]
        for child_id in module["items"]:
            child = self.item(child_id)
            if child is None or child.get("visibility") != "public":
                continue
            inner = child["inner"]
            if "use" in inner:
                use = inner["use"]
                target = self.item(use["id"]) if use.get("id") is not None else None
                if target is None:
                    # A re-export of another crate's item.
                    self.emit(f"pub use {path}::{use['name']} = {use['source']}")
                    continue
                if use["is_glob"]:
                    if "module" in target["inner"]:
                        for gid in target["inner"]["module"]["items"]:
                            g = self.item(gid)
                            if g is not None and g.get("visibility") == "public" and g.get("name"):
                                self.walk_item(gid, f"{path}::{g['name']}", seen)
                    continue
                self.walk_item(use["id"], f"{path}::{use['name']}", seen)
            elif child.get("name"):
                self.walk_item(child_id, f"{path}::{child['name']}", seen)

    def walk_item(self, id_, path, seen):
        it = self.item(id_)
        if it is None:
            return
        self.public.setdefault(id_, set()).add(path)
        (kind, v), = it["inner"].items()
        if kind == "module":
            self.walk_module(id_, path, seen)
        elif kind == "struct":
            self.emit(f"pub struct {path}{self.generics(v['generics'])}{self.where_clause(v['generics'])}")
            sk = v["kind"]
            if isinstance(sk, dict) and "plain" in sk:
                for fid in sk["plain"]["fields"]:
                    self.field(fid, path)
            elif isinstance(sk, dict) and "tuple" in sk:
                for n, fid in enumerate(sk["tuple"]):
                    if fid is not None:
                        f = self.item(fid)
                        self.emit(f"pub {path}::{n}: {self.ty(f['inner']['struct_field'])}")
            self.impls(v["impls"], path)
        elif kind == "enum":
            self.emit(f"pub enum {path}{self.generics(v['generics'])}{self.where_clause(v['generics'])}")
            for vid in v["variants"]:
                self.variant(vid, path)
            self.impls(v["impls"], path)
        elif kind == "union":
            self.emit(f"pub union {path}")
            self.impls(v["impls"], path)
        elif kind == "function":
            prefix, _, name = path.rpartition("::")
            self.emit(f"pub {self.fn_sig(name, v)}".replace(f"fn {name}", f"fn {prefix}::{name}", 1))
        elif kind == "trait":
            unsafe = "unsafe " if v.get("is_unsafe") else ""
            b = self.bounds(v.get("bounds", []))
            self.emit(f"pub {unsafe}trait {path}{self.generics(v['generics'])}{': ' + b if b else ''}")
            for tid in v["items"]:
                self.assoc(tid, path, in_trait=True)
        elif kind == "constant":
            self.emit(f"pub const {path}: {self.ty(v['type'])}")
        elif kind == "static":
            self.emit(f"pub static {path}: {self.ty(v['type'])}")
        elif kind == "type_alias":
            self.emit(f"pub type {path}{self.generics(v['generics'])} = {self.ty(v['type'])}")
        elif kind in ("macro", "proc_macro"):
            self.emit(f"pub macro {path}")
        else:
            self.emit(f"pub {kind} {path}")

    def field(self, fid, path):
        f = self.item(fid)
        if f is None or f.get("visibility") != "public":
            return
        self.emit(f"pub {path}::{f['name']}: {self.ty(f['inner']['struct_field'])}")

    def variant(self, vid, path):
        var = self.item(vid)
        vk = var["inner"]["variant"]["kind"]
        vpath = f"{path}::{var['name']}"
        if vk == "plain":
            self.emit(f"pub variant {vpath}")
        elif "tuple" in vk:
            tys = [self.ty(self.item(f)["inner"]["struct_field"]) if f is not None else "_" for f in vk["tuple"]]
            self.emit(f"pub variant {vpath}({', '.join(tys)})")
        elif "struct" in vk:
            self.emit(f"pub variant {vpath} {{ .. }}")
            for fid in vk["struct"]["fields"]:
                f = self.item(fid)
                self.emit(f"pub {vpath}::{f['name']}: {self.ty(f['inner']['struct_field'])}")

    def assoc(self, id_, path, in_trait):
        a = self.item(id_)
        if a is None:
            return
        if not in_trait and a.get("visibility") != "public":
            return
        (kind, v), = a["inner"].items()
        name = f"{path}::{a['name']}"
        if kind == "function":
            sig = self.fn_sig(a["name"], v).replace(f"fn {a['name']}", f"fn {name}", 1)
            self.emit(f"pub {sig}")
        elif kind == "assoc_const":
            self.emit(f"pub const {name}: {self.ty(v['type'])}")
        elif kind == "assoc_type":
            b = self.bounds(v.get("bounds", []))
            self.emit(f"pub type {name}{': ' + b if b else ''}")

    def impls(self, impl_ids, path):
        for iid in impl_ids:
            imp = self.item(iid)
            if imp is None:
                continue
            v = imp["inner"]["impl"]
            if v.get("is_synthetic") or v.get("blanket_impl") is not None:
                continue
            if v.get("trait") is None:
                for aid in v["items"]:
                    self.assoc(aid, path, in_trait=False)
                continue
            trait = v["trait"]
            if trait["path"].split("::")[-1] in AUTO_TRAITS:
                continue
            neg = "!" if v.get("is_negative") else ""
            self.emit(
                f"impl{self.generics(v['generics'])} {neg}{self.path_name(trait)} for {path}"
                f"{self.where_clause(v['generics'])}"
            )


def main():
    doc = json.load(open(sys.argv[1]))
    api = Api(doc)
    root = api.item(doc["root"])
    # Twice: the first walk learns every item's public paths, the second
    # renders the types with them.
    api.walk_module(doc["root"], root["name"], set())
    api.lines = set()
    api.walk_module(doc["root"], root["name"], set())
    for line in sorted(api.lines):
        print(line)


if __name__ == "__main__":
    main()
