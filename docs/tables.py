"""Tables in docs/claims.md and BENCHMARKS.md are generated from committed result files.

In a fragment (docs/claims/*.md, docs/bench/*.md) every table is preceded by a marker line naming its sources,

    <!-- table-sources: b=experiments/results/se_gates_pruning/bench_s1/bench.json -->

and every number in its body cells is a placeholder ``{{expression;format}}``: a Python expression over the sources'
JSON (``b["rows"][0]["macs_removed"]``, arithmetic, ``abs``/``min``/``max``/``round``/``len``/``sum``, and
``pick(list, key=value, ...)`` for the first entry of a result list with those fields) and an
optional format spec (``.1f``, ``,``, ``+.2f``; a leading ``u`` writes a negative sign as the typographic minus
"−"). `docs/compose.py` renders the placeholders when it assembles the two documents, keeping the marker (so the raw
markdown still says where a table comes from). `check_fragment` lists what breaks the rule: a table without a marker,
a source that is not a file under version control, a number written by hand in a body cell (the header row and the
first column are labels; digits inside words such as ``k3``, ``W8A4`` or ``b0`` are names, not numbers).
"""

from __future__ import annotations

import ast
import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["MARKER", "PLACEHOLDER", "check_fragment", "find_tables", "render_fragment", "tracked_files"]

MARKER = re.compile(r"^\s*<!-- table-sources: (.*?) -->\s*$")
PLACEHOLDER = re.compile(r"\{\{(.+?)\}\}")
# A number standing alone (also after a multiplication "x": x2.67), not a digit inside a name such as k3, W8A4, b0,
# fp32 or 2-D: what must be generated.
LITERAL_NUMBER = re.compile(r"(?:(?<=\bx)|(?<![\w.]))[-+−]?(?>\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?)(?![\w.]|-[A-Za-z])")


def pick(items: list, **fields: Any) -> Any:
    """The first mapping of `items` whose fields equal `fields` (how a placeholder finds a row of a result list);
    ValueError when there is none."""
    for item in items:
        if all(item.get(k) == v for k, v in fields.items()):
            return item
    raise ValueError(f"no entry with {fields}")


SAFE_BUILTINS = {"abs": abs, "min": min, "max": max, "round": round, "len": len, "sum": sum, "sorted": sorted,
                 "pick": pick}


def _is_row(line: str) -> bool:
    s = line.strip()
    return len(s) > 1 and s.startswith("|") and s.endswith("|")


def find_tables(lines: list[str]) -> list[tuple[int, int]]:
    """(first, end) line ranges of the markdown tables in `lines` (contiguous rows starting and ending with '|')."""
    out, start = [], None
    for i, line in enumerate(lines + [""]):
        if _is_row(line) and start is None:
            start = i
        elif not _is_row(line) and start is not None:
            out.append((start, i))
            start = None
    return out


def _sources(marker: str, root: Path) -> dict[str, Any]:
    ns: dict[str, Any] = {}
    for item in marker.split():
        alias, _, rel = item.partition("=")
        if not alias.isidentifier() or not rel:
            raise ValueError(f"bad table source {item!r}: expected alias=path/to/file.json")
        ns[alias] = json.loads((root / rel).read_text())
    return ns


def _format(value: Any, spec: str) -> str:
    minus = spec.startswith("u")
    spec = spec[1:] if minus else spec
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    text = format(value, spec) if spec else str(value)
    return text.replace("-", "−") if minus else text


def _render_line(line: str, ns: dict[str, Any], where: str) -> str:
    def one(m: re.Match) -> str:
        expr, _, spec = m.group(1).rpartition(";") if ";" in m.group(1) else (m.group(1), "", "")
        try:
            value = eval(expr, {"__builtins__": SAFE_BUILTINS}, ns)  # noqa: S307 - the docs' own expressions
        except Exception as e:
            raise ValueError(f"{where}: cannot evaluate {{{{{m.group(1)}}}}}: {type(e).__name__}: {e}") from None
        return _format(value, spec)

    return PLACEHOLDER.sub(one, line)


def render_fragment(text: str, root: Path, name: str = "fragment") -> str:
    """`text` with the placeholders of every marked table replaced by their values (markers kept)."""
    lines = text.split("\n")
    out = list(lines)
    for first, end in find_tables(lines):
        m = MARKER.match(lines[first - 1]) if first > 0 else None
        if m is None:
            continue
        ns = _sources(m.group(1), root)
        for i in range(first, end):
            out[i] = _render_line(lines[i], ns, f"{name}:{i + 1}")
    leftover = [i + 1 for i, line in enumerate(out) if PLACEHOLDER.search(line)]
    if leftover:
        raise ValueError(f"{name}: placeholders outside a marked table on line(s) {leftover}")
    return "\n".join(out)


def tracked_files(root: Path) -> set[str] | None:
    """Paths under version control at `root` (None when git is not available)."""
    try:
        r = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return set(r.stdout.splitlines()) if r.returncode == 0 else None


def check_fragment(text: str, root: Path, name: str = "fragment", tracked: set[str] | None = None) -> list[str]:
    """What in `text` breaks the rule that table numbers are generated from committed result files."""
    problems = []
    lines = text.split("\n")
    for first, end in find_tables(lines):
        m = MARKER.match(lines[first - 1]) if first > 0 else None
        if m is None:
            problems.append(f"{name}:{first + 1}: table without a '<!-- table-sources: ... -->' marker")
            continue
        aliases = {item.partition("=")[0] for item in m.group(1).split()}
        for item in m.group(1).split():
            rel = item.partition("=")[2]
            if not (root / rel).is_file():
                problems.append(f"{name}:{first}: source {rel} does not exist")
            elif tracked is not None and rel not in tracked:
                problems.append(f"{name}:{first}: source {rel} is not committed")
        for i in range(first, end):  # a placeholder that reads no source would be a number typed by hand
            for ph in PLACEHOLDER.findall(lines[i]):
                expr = ph.rpartition(";")[0] if ";" in ph else ph
                try:
                    names = {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)}
                except SyntaxError:
                    names = set()
                if not names & aliases:
                    problems.append(f"{name}:{i + 1}: placeholder {{{{{ph}}}}} reads none of the table's sources")
        for i in range(first + 2, end):  # below the header row and its |---| rule
            cells = PLACEHOLDER.sub(" ", lines[i]).strip().strip("|").split("|")
            for cell in cells[1:]:  # the first column labels the row
                for num in LITERAL_NUMBER.findall(cell):
                    problems.append(f"{name}:{i + 1}: number {num!r} written by hand in a table cell")
    return problems
