#!/usr/bin/env python3
"""Import graph of a crate's src/: files and top-level folders, with cycles (SCCs).
Paths `crate::...`, `super::...` and a file's relative `use child::...` are resolved through item definitions (struct/enum/trait/fn/const/type/static/macro names)
to the file that defines them; module paths to the module's file."""
import os, re, sys
from collections import defaultdict
root = sys.argv[1] if len(sys.argv) > 1 else 'src'
files = []
for d, _, fs in os.walk(root):
    for f in fs:
        if f.endswith('.rs'): files.append(os.path.join(d, f))
def modpath(f):
    r = os.path.relpath(f, root)[:-3].split(os.sep)
    if r[-1] in ('lib', 'mod', 'main'): r = r[:-1]
    return tuple(r)
mods = {modpath(f): f for f in files}
defs = defaultdict(set)
defre = re.compile(r'^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+fn|async\s+fn|unsafe\s+fn|fn|struct|enum|trait|const|static|type|union)\s+([A-Za-z_][A-Za-z0-9_]*)', re.M)
for f in files:
    src = open(f).read()
    for m in defre.finditer(src):
        defs[m.group(1)].add(f)
def strip(src):
    src = re.sub(r'//[^\n]*', '', src)
    return src
# expand `use crate::{a::{b, c}, d}` groups
def expand(prefix, body):
    out = []; depth = 0; cur = ''
    for ch in body:
        if ch == '{': depth += 1
        if ch == '}': depth -= 1
        if ch == ',' and depth == 0:
            out.append(cur); cur = ''
        else: cur += ch
    out.append(cur)
    res = []
    for part in out:
        part = part.strip()
        if not part: continue
        m = re.match(r'^([\w:]*?)::\{(.*)\}$', part, re.S)
        if m: res += expand(prefix + [x for x in m.group(1).split('::') if x], m.group(2))
        else: res.append(prefix + [x for x in part.split(' as ')[0].strip().split('::') if x])
    return res
def resolve(path, here):
    # path: list starting after 'crate'
    for n in range(len(path), 0, -1):
        t = tuple(path[:n])
        if n < len(path) or path[-1] in ('self',):
            pass
        if t in mods:
            # last element may be an item defined in that module or a child file
            if n < len(path):
                item = path[n]
                cand = defs.get(item, set())
                inmod = [c for c in cand if modpath(c)[:len(t)] == t]
                if len(inmod) == 1: return inmod[0]
                if len(cand) == 1: return next(iter(cand))
            return mods[t]
    # root re-export: crate::Name
    if path:
        cand = defs.get(path[-1], set())
        if len(cand) == 1: return next(iter(cand))
    return None
edges = defaultdict(set)
for f in files:
    src = strip(open(f).read())
    here = modpath(f)
    paths = []
    # inline modules (`mod tests { .. }`): inside one, `super` is this file's module
    inline = []
    for im in re.finditer(r'\bmod\s+(\w+)\s*\{', src):
        depth = 0
        for j in range(im.end() - 1, len(src)):
            if src[j] == '{': depth += 1
            elif src[j] == '}':
                depth -= 1
                if depth == 0: break
        inline.append((im.start(), j, im.group(1)))
    def scope_at(pos):
        return list(here) + [n for a, b, n in inline if a < pos < b]
    for m in re.finditer(r'\buse\s+(crate|super|self)::((?:[^;])*);', src):
        base = m.group(1); body = m.group(2).strip()
        inner = scope_at(m.start())
        if body.startswith('{'): ps = expand([], body[1:-1])
        else: ps = expand([], body)
        for p in ps:
            if base == 'crate': paths.append(p)
            elif base == 'super':
                # super from a file module x/y.rs is x; from x/y/mod.rs is x;
                # from an inline module inside x/y.rs, x::y
                paths.append(inner[:-1] + p)
            else:
                paths.append(inner + p)
    # relative paths through a child module this file declares (`mod x;` then
    # `pub use x::Item;`, the usual re-export of a folder's mod.rs)
    children = set(re.findall(r'^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;', src, re.M))
    for m in re.finditer(r'\buse\s+((?:[^;])*);', src):
        body = m.group(1).strip()
        first = re.match(r'(\w+)', body)
        if not first or first.group(1) not in children: continue
        for p in expand([], body):
            paths.append(list(here) + p)
    # inline paths; `crate::a::{..}` groups are read by the `use` parser above
    for m in re.finditer(r'(?<![\w:])crate::((?:\w+::)*\w+)(?![\w:])', src):
        paths.append(m.group(1).split('::'))
    for p in paths:
        p = [x for x in p if x not in ('self',)]
        t = resolve(p, here)
        if t and t != f: edges[f].add(t)
def folder(f):
    r = os.path.relpath(f, root).split(os.sep)
    return r[0] if len(r) > 1 else r[0][:-3]
def sccs(nodes, adj):
    idx = {}; low = {}; st = []; on = set(); out = []; c = [0]
    sys.setrecursionlimit(10000)
    def go(v):
        idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
        for w in adj.get(v, ()):
            if w not in idx: go(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    for v in nodes:
        if v not in idx: go(v)
    return out
fadj = {f: edges[f] for f in files}
fold = defaultdict(set)
for f, ts in edges.items():
    for t in ts:
        a, b = folder(f), folder(t)
        if a != b and a not in ('lib',) and b not in ('lib',): fold[a].add(b)
fs = sccs(sorted(files), fadj)
ds = sccs(sorted(set(folder(f) for f in files)), fold)
print('file cycles (SCCs with >1 file):', len(fs))
for c in fs: print('  ', [os.path.relpath(x, root) for x in c])
print('folder cycles (SCCs with >1 folder):', len(ds))
for c in ds:
    print('  ', c)
    for a in c:
        for b in sorted(fold[a]):
            if b in c: print('      %s -> %s' % (a, b))
