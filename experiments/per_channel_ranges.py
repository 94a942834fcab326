"""Why per-channel activation ranges lost to per-tensor ones in Experiment F (docs/claims/f_quant_se_placement.md).

    python experiments/per_channel_ranges.py      # ~2 min on one core; needs Experiment F's cached L = 16 nets

On one trained net per dataset (L = 16, SE-post, seed 0, from `results/se_placement_quant_runs`), W8A8 and W8A4:
- per-tensor vs per-channel activation ranges, with the pooled sites (SE vectors, classifier input, logits)
  per-channel too (what Experiment F ran) or per-tensor (the library's default since);
- min/max ranges calibrated on 512 training samples vs on the test samples that are then measured: if the
  per-channel loss is range generalisation, calibrating on the measured samples removes it;
- the activation sites with the lowest local SQNR.
Result: experiments/results/se_placement_quant/per_channel_ranges.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from se_placement_quant import run_dir  # Experiment F's cache layout (experiments/ is on sys.path)

from mbconv.data import load_dataset
from mbconv.provenance import RunRecord
from mbconv.quant.insert import QuantConfig
from mbconv.quant.noise import measure_sqnr
from mbconv.quant.ptq import ptq
from mbconv.report import write_json
from mbconv.train import evaluate
from mbconv.workflow import load_run

OUT = Path(__file__).parent / "results" / "se_placement_quant" / "per_channel_ranges.json"
GRANULARITY = {"tensor": dict(a_per_channel=False),
               "channel, pooled sites too": dict(a_per_channel=True, a_per_channel_pooled=True),
               "channel, pooled sites per-tensor": dict(a_per_channel=True)}


def study(run: Path, data: str) -> dict:
    model, meta, _ = load_run(run)
    res = meta["data"]["resolution"]
    train_ds, test_ds = load_dataset(data, "train", resolution=res), load_dataset(data, "test", resolution=res)
    calib = torch.stack([train_ds[i][0] for i in range(512)])
    xs = torch.stack([test_ds[i][0] for i in range(512)])
    fp = evaluate(model, test_ds)["acc"]
    out: dict = {"run": str(run), "fp32_acc": fp, "mse_ranges": {}, "minmax_calibrated_on": {}}
    for ab in (8, 4):
        for name, kw in GRANULARITY.items():
            q = ptq(model, QuantConfig(wbits=8, abits=ab, a_calib="mse", **kw), calib)
            rep = measure_sqnr(q, xs, num_samples=256, batch_size=256)
            worst = sorted((v["local_db"], k) for k, v in rep["sites"].items() if not k.endswith(":weight"))[:4]
            out["mse_ranges"][f"W8A{ab} {name}"] = {
                "output_db": rep["output_db"], "acc_drop_pt": 100 * (fp - evaluate(q, test_ds)["acc"]),
                "lowest_local_db": [[k, v] for v, k in worst]}
    for name in ("tensor", "channel, pooled sites too"):
        for src, c in (("train", calib), ("test", xs[:256])):  # xs[:256]: the samples measure_sqnr uses
            q = ptq(model, QuantConfig(wbits=8, abits=8, a_calib="minmax", **GRANULARITY[name]), c)
            out["minmax_calibrated_on"][f"W8A8 {name}, {src}"] = measure_sqnr(q, xs, num_samples=256,
                                                                                 batch_size=256)["output_db"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="results/se_placement_quant_runs")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(1)
    record = RunRecord()  # evaluates Experiment F's cached nets: their seeds/epochs are in the run paths
    result = {"command": " ".join(["python", "experiments/per_channel_ranges.py", *sys.argv[1:]])}
    for data in ("mnist5k", "mnist1d"):
        run = run_dir(Path(args.cache), data, 16, "se_post", 0, 20)
        if not (run / "best" / "meta.json").exists() and not (run / "last" / "meta.json").exists():
            sys.exit(f"no trained net at {run}: run experiments/se_placement_quant.py --depths 16 --seeds 0 first")
        result[data] = study(run, data)
        print(data, json.dumps(result[data], indent=1), flush=True)
    write_json(Path(args.out), {**result, "provenance": record.as_dict()})


if __name__ == "__main__":
    main()
