"""Pack finished F runs into $OUT: evals.tar.gz (evaluations, metrics, metas) and, with --weights, weights{i}.tar."""
import os
import sys
import tarfile
from pathlib import Path

out = Path(sys.argv[1])
weights = "--weights" in sys.argv
root = Path("results/se_placement_quant_runs")
runs = sorted(p.parent for p in root.glob("*/*/eval_full.json"))
tmp = out / ".evals.tmp"
with tarfile.open(tmp, "w:gz") as t:
    for r in runs:
        for f in ("eval_full.json", "metrics.jsonl", "best/meta.json", "last/meta.json"):
            if (r / f).exists():
                t.add(r / f)
    for f in ("results/fchunk/rows_full.json",):
        if Path(f).exists():
            t.add(f)
os.replace(tmp, out / "evals.tar.gz")
if weights:
    chunk, size, i = [], 0, 0
    files = [r / "last/model.safetensors" for r in runs if (r / "last/model.safetensors").exists()]
    def flush(i, chunk):
        with tarfile.open(out / f"weights{i}.tar", "w") as t:
            for f in chunk:
                t.add(f)
    for f in files:
        s = f.stat().st_size
        if chunk and size + s > 15_000_000:
            flush(i, chunk)
            i += 1
            chunk, size = [], 0
            if i >= 4:
                break
        chunk.append(f)
        size += s
    if chunk and i < 4:
        flush(i, chunk)
print("packed", len(runs), "runs", flush=True)
