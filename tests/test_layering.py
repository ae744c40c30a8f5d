"""The library's import graph (DESIGN.md "Layout": arrows point down only), read from the
source with `ast`, no module imported: no circle among normx_track's modules, no import
pointing up the layers, and no module reaching into another's ``_private`` names.

Layers, bottom to top (a module may import its own layer and those below it; imports
inside functions count, since they are how circles hide):

    0  keys, errors, modeling, text,       plain names, model plumbing, text helpers,
       version, files                      the package's version, user files checked
    1  record, gold                        files and statistics
    2  attribution                         NormXLogit / LogAt, explain
    3  probes                              evidence, faithfulness, likelihood, files
    4  tracker                             the front ends' core
    5  training                            config, run, data, loggers
    6  normx_track (the package), hf, export   entry points

`ELSEWHERE` lists what is known and left to the packages' owners: each entry must still be
found (drop it when it is fixed), and nothing outside it may appear.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "normx_track"

LAYERS = {
    "keys": 0, "errors": 0, "modeling": 0, "text": 0, "version": 0, "files": 0,
    "record": 1, "gold": 1,
    "attribution": 2,
    "probes": 3,
    "tracker": 4,
    "training": 5,
    "": 6, "hf": 6, "export": 6,  # "" is normx_track/__init__.py
}

# Known and left (kind, importer, imported): none now.
ELSEWHERE: set[tuple[str, str, str]] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _package(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str, path: Path, modules: dict[str, Path]):
    """(imported module, private name or None) for every import in ``module``, and for
    every ``alias._private`` attribute read through an imported module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in modules:
                    yield a.name, None
                    if a.asname:
                        aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = _package(module, path).split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base not in modules:
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in modules:  # `from pkg import submodule`
                    yield sub, None
                    aliases[a.asname or a.name] = sub
                else:
                    yield base, (a.name if _is_private(a.name) else None)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and _is_private(node.attr)):
            yield aliases[node.value.id], node.attr


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of two or more modules (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def violations() -> set[tuple[str, str, str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {}
    found = set()
    for module, path in modules.items():
        for target, private in _imports(module, path, modules):
            if target == module:
                continue
            edges.setdefault(module, set()).add(target)
            if _layer(target) > _layer(module):
                found.add(("up", module, target))
            if private:
                found.add(("private", module, f"{target}.{private}"))
    for comp in _circles(edges):
        found.add(("circle", *comp[:2]) if len(comp) == 2 else ("circle", *comp))
    return found


def test_imports_point_down_with_no_circle_and_no_private_reach():
    found = violations()
    new = sorted(found - ELSEWHERE)
    assert not new, "imports against the layering:\n" + "\n".join(map(str, new))
    fixed = sorted(ELSEWHERE - found)
    assert not fixed, "fixed: drop from ELSEWHERE:\n" + "\n".join(map(str, fixed))


def test_every_package_has_a_layer():
    for module in _modules():
        _layer(module)  # KeyError: a new package needs its place in LAYERS


if __name__ == "__main__":  # the counts, e.g. before and after a change
    for kind in ("circle", "up", "private"):
        rows = sorted(v for v in violations() if v[0] == kind)
        print(f"{kind}: {len(rows)}")
        for row in rows:
            print("   ", *row[1:])
