"""docs/claims.md and BENCHMARKS.md are assembled from fragments: the committed files must match them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_composed_docs_are_up_to_date() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "compose.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_table_number_is_generated_from_a_committed_result_file() -> None:
    """Each table of the fragments names its committed JSON sources and writes its numbers as placeholders over them
    (docs/tables.py), which docs/compose.py renders; the test above keeps the composed files equal to that."""
    sys.path.insert(0, str(ROOT / "docs"))
    import compose
    import tables

    tracked = tables.tracked_files(ROOT)
    problems = []
    for folder, names in compose.TARGETS.values():
        for name in names:
            path = folder / f"{name}.md"
            if path.exists():
                problems += tables.check_fragment(path.read_text(), ROOT, f"{folder.name}/{name}.md", tracked)
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:40])


def test_table_checker_catches_hand_written_numbers(tmp_path) -> None:
    sys.path.insert(0, str(ROOT / "docs"))
    import tables

    (tmp_path / "r.json").write_text('{"acc": 0.9812, "rows": [{"n": 1200}]}')
    good = ("<!-- table-sources: a=r.json -->\n| model | acc | n |\n|---|---|---|\n"
            "| k3 x1.5 | {{100*a['acc'];.2f}} % | {{a['rows'][0]['n'];,}} |\n")
    assert tables.check_fragment(good, tmp_path) == []
    assert "| k3 x1.5 | 98.12 % | 1,200 |" in tables.render_fragment(good, tmp_path)
    typed = good.replace("{{a['rows'][0]['n'];,}}", "1,200")
    assert any("'1,200' written by hand" in p for p in tables.check_fragment(typed, tmp_path))
    assert any("without a" in p for p in tables.check_fragment(typed.split("\n", 1)[1], tmp_path))
    assert any("is not committed" in p for p in tables.check_fragment(good, tmp_path, tracked=set()))
    assert "−1.50" in tables.render_fragment(good.replace("100*a['acc'];.2f", "-1.5;u.2f"), tmp_path)
    assert any("reads none" in p for p in tables.check_fragment(good.replace("100*a['acc']", "98.12"), tmp_path))
