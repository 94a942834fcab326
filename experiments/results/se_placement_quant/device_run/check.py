"""Device pre-flight: environment, data identity, CPU vs CUDA equivalence of the PTQ evaluation; writes
.dev/devices ("<train_device> <eval_device>")."""
import hashlib
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, "experiments")
torch.set_num_threads(1)
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
import se_placement_quant as F  # noqa: E402

from mbconv.data import load_dataset  # noqa: E402

exp = json.loads(Path(".dev/expected.json").read_text())
out = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
for n in ("mnist1d", "mnist5k"):
    d = load_dataset(n, "train")
    x = np.stack([d[i][0].numpy() for i in range(64)])
    out[f"hash_{n}"] = hashlib.sha1(x.tobytes()).hexdigest()[:12]
    out[f"hash_{n}_ok"] = out[f"hash_{n}"] == exp[f"hash_{n}"]
print(out, flush=True)
train_dev, eval_dev = "cpu", "cpu"
res = {}
for dev in ("cpu", "cuda"):
    try:
        t = time.time()
        r = F.evaluate_model(Path(".dev/check_run"), "mnist1d", True, 20, print, device=dev)
        res[dev] = r
        print(dev, "quick eval", round(time.time() - t, 1), "s", flush=True)
    except Exception:
        traceback.print_exc()
ref = exp["eval"]
def diff(r):
    d_db = max(abs(r["ptq"][k]["output_db"] - ref["ptq"][k]["output_db"]) for k in ref["ptq"])
    d_acc = max(abs(r["ptq"][k]["acc"] - ref["ptq"][k]["acc"]) for k in ref["ptq"])
    return d_db, d_acc, abs(r["fp32_acc"] - ref["fp32_acc"]), abs(r["qat_W4A4"]["qat_acc"] - ref["qat_W4A4"]["qat_acc"])
for dev, r in res.items():
    print(dev, "vs local CPU: max |d SQNR| dB, max |d acc|, |d fp32 acc|, |d qat acc| =", diff(r), flush=True)
if "cuda" in res:
    d_db, d_acc, d_fp, _ = diff(res["cuda"])
    if d_db < 0.3 and d_acc <= 0.01 and d_fp <= 0.002:
        eval_dev = "cuda"
try:
    t = time.time()
    F.train(4, "se_post", 0, "mnist1d", 1, 64, Path("/tmp/check_train"), device="cuda")
    print("cuda 1-epoch L=4 train", round(time.time() - t, 1), "s", flush=True)
    train_dev = "cuda"
except Exception:
    traceback.print_exc()
Path(".dev/devices").write_text(f"{train_dev} {eval_dev}\n")
print("devices:", train_dev, eval_dev, flush=True)
