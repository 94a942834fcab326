"""The package's shape, checked: layers of modules with imports only downwards, no import cycles, no private
names imported across modules, no source file over 600 lines, and a library that never reads the repository.

The layer of each module is listed in `LAYERS` (docs/architecture.md draws the same picture). A module may import
modules of its own layer or lower ones; imports inside functions count too (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "mbconv"
MAX_LINES = 600

# Lowest first. A module's layer is that of the longest listed prefix of its dotted name.
LAYERS: list[list[str]] = [
    ["mbconv.layers"],                                                              # 0 building blocks
    ["mbconv.spec"],                                                                # 1 what a network is
    ["mbconv.scaling", "mbconv.zoo", "mbconv.zoo_nd", "mbconv.net", "mbconv.cost",  # 2 networks and their cost
     "mbconv.inference", "mbconv.plotting", "mbconv.efficientnet"],
    ["mbconv.compat", "mbconv.data", "mbconv.data_nd", "mbconv.checkpoint",         # 3 weights, data, files
     "mbconv.files", "mbconv.provenance"],
    ["mbconv.train", "mbconv.workflow", "mbconv.finetune"],                         # 4 training and runs
    ["mbconv.gates", "mbconv.prune", "mbconv.stability", "mbconv.roofline",         # 5 analysis, compression
     "mbconv.scaling_search", "mbconv.quant"],
    ["mbconv.export", "mbconv.latency_search"],                                     # 6 deployment, timed search
    ["mbconv.report", "mbconv.model_source"],                                       # 7 report, shared builders
    ["mbconv.cli_args"],                                                            # 8 argument types
    ["mbconv.commands", "mbconv.chapters"],                                         # 9 sub-commands, chapters
    ["mbconv.tour"],                                                                # 10 the tour
    ["mbconv.cli", "mbconv.__main__"],                                              # 11 the entry point
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer_of(name: str) -> int | None:
    best, layer = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and len(p) > best:
                best, layer = len(p), i
    if name == "mbconv":
        return len(LAYERS)  # the package's __init__ re-exports the public API
    return layer


def resolve(importer: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mods: dict[str, Path]) -> list[tuple[str, str, list[str], int]]:
    """(importer, imported module, names imported, line) for every import of an mbconv module."""
    out = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("mbconv"):
                        out.append((name, a.name, [], node.lineno))
            elif isinstance(node, ast.ImportFrom):
                target = resolve(name, is_pkg, node)
                if not target.startswith("mbconv"):
                    continue
                names = [a.name for a in node.names]
                # `from . import zoo` imports the module mbconv.zoo, not a name of mbconv
                subs = [n for n in names if f"{target}.{n}" in mods]
                for n in subs:
                    out.append((name, f"{target}.{n}", [], node.lineno))
                rest = [n for n in names if n not in subs]
                if rest or not subs:
                    out.append((name, target, rest, node.lineno))
    return out


def test_every_module_has_a_layer() -> None:
    missing = [m for m in modules() if layer_of(m) is None]
    assert not missing, f"modules without a layer in LAYERS: {missing}"


def test_imports_only_go_down() -> None:
    bad = []
    for src, dst, _, line in imports(modules()):
        ls, ld = layer_of(src), layer_of(dst)
        if ls is not None and ld is not None and ld > ls and not src.startswith(dst + "."):
            bad.append(f"{src}:{line} imports {dst} (layer {ls} -> {ld})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for src, dst, _, _ in imports(mods):
        # a package's __init__ importing its own submodules is how a package exports; not a dependency cycle
        if dst in graph and dst != src and not dst.startswith(src + "."):
            graph[src].add(dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
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
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_names_across_modules() -> None:
    bad = [f"{src}:{line} imports {n} from {dst}" for src, dst, names, line in imports(modules())
           for n in names if n.startswith("_") and not n.startswith("__") and dst != src]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_source_files_are_short(path: Path) -> None:
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PKG)} has {n} lines (max {MAX_LINES}): split it by concern"


def test_library_never_reads_the_repository() -> None:
    bad = []
    for name, path in modules().items():
        text = path.read_text()
        for needle in ("parents[2]", "parents[3]", '"experiments"', "'experiments'"):
            if needle in text:
                bad.append(f"{name}: {needle}")
    assert not bad, "library code that reaches into the repository:\n" + "\n".join(bad)


# -- the picture in docs/architecture.md ------------------------------------------------------------------------
DOC = PKG.parents[1] / "docs" / "architecture.md"
BEGIN, END = "<!-- import-arrows:begin -->", "<!-- import-arrows:end -->"


def room(name: str) -> str:
    """A module's room: its first name below mbconv (a top-level module or a sub-package)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "mbconv"


def import_arrows() -> str:
    """The rooms layer by layer (highest first), each with the rooms it imports (its arrows point down)."""
    mods = modules()
    arrows: dict[str, set[str]] = {}
    for src, dst, _, _ in imports(mods):
        a, b = room(src), room(dst)
        if a != b and a != "mbconv" and b != "mbconv":
            arrows.setdefault(a, set()).add(b)
    rooms_by_layer: dict[int, set[str]] = {}
    for m in mods:
        if room(m) != "mbconv":
            rooms_by_layer.setdefault(layer_of(m), set()).add(room(m))
    lines = ["```"]
    for layer in sorted(rooms_by_layer, reverse=True):
        for r in sorted(rooms_by_layer[layer]):
            down = ", ".join(sorted(arrows.get(r, ())))
            lines.append(f"{layer:>2}  {r:<15}" + (f" -> {down}" if down else "").rstrip())
    lines.append("```")
    return "\n".join(lines)


def test_architecture_doc_shows_the_current_import_arrows() -> None:
    text = DOC.read_text()
    assert BEGIN in text and END in text, f"{DOC} needs the markers {BEGIN} / {END}"
    shown = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert shown == import_arrows(), "docs/architecture.md is stale: run `python tests/test_architecture.py`"


if __name__ == "__main__":  # rewrite the picture in docs/architecture.md
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    DOC.write_text(head + BEGIN + "\n" + import_arrows() + "\n" + END + rest.split(END, 1)[1])
    print(import_arrows())
