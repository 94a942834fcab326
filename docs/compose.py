"""Assemble docs/claims.md and BENCHMARKS.md from their per-topic fragments (edit the fragments, then run this).

    python docs/compose.py          # rewrite both files
    python docs/compose.py --check  # exit 1 if either file is out of date (used by the tests)

Every table of a fragment is generated: its numbers are placeholders over committed result files, rendered here
(docs/tables.py says how), so a table cannot drift from the file it cites.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS))
from tables import render_fragment  # noqa: E402  (docs/ is not a package)

TARGETS = {
    DOCS / "claims.md": (DOCS / "claims", ["_header", "a_b_cost", "c_se_pruning", "d_scaling_conditioning",
                                           "e_kernel_resolution", "f_quant_se_placement", "g_beyond_2d",
                                           "h_reruns_issue17"]),
    DOCS.parent / "BENCHMARKS.md": (DOCS / "bench", ["_header", "accuracy", "speed", "depthwise", "roofline", "int8",
                                                    "real", "finetune", "pruning", "stability", "nd", "phone"]),
}


def compose(folder: Path, names: list[str]) -> str:
    """The fragments that exist, in order; each ends with exactly one newline, joined by a blank line."""
    parts = [render_fragment((folder / f"{n}.md").read_text(), DOCS.parent, f"{folder.name}/{n}.md")
             for n in names if (folder / f"{n}.md").exists()]
    head, rest = parts[0], [p.rstrip("\n") + "\n" for p in parts[1:]]
    return head + "\n".join(rest)


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for target, (folder, names) in TARGETS.items():
        text = compose(folder, names)
        if target.exists() and target.read_text() == text:
            continue
        stale.append(target.name)
        if not check:
            target.write_text(text)
    if check and stale:
        print(f"out of date: {', '.join(stale)} (run: python docs/compose.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
