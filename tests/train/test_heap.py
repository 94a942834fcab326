"""Large tensors from the heap during training (mbconv.train.heap): the setting changes how often a large tensor's
memory is faulted in, nests, stands down for the user's own malloc settings, and the Trainer records it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mbconv.train import TrainConfig, Trainer
from mbconv.train.heap import glibc_malloc, large_tensor_heap, user_malloc_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_train_scripts"))
from tinytrain import TinyNet, make_data  # noqa: E402

glibc_only = pytest.mark.skipif(glibc_malloc() is None or user_malloc_settings(),
                                reason="needs glibc's malloc without user threshold settings")
# Measured in a fresh interpreter: glibc's heap state depends on everything the process allocated before (an
# earlier test's freed blocks can serve a large request with no fault at all), so only a clean process gives the
# same answer each time.
PROBE = """
import json, resource, torch
from mbconv.train.heap import large_tensor_heap
BIG = (48 << 20) // 4  # a 48 MiB float32 tensor: above glibc's largest adaptive mmap threshold

def faults():
    # minor page faults of filling a 48 MiB tensor after equal ones were allocated, touched and freed: the steady
    # state of a training loop (the first few aligned allocations move through the heap as it grows)
    for _ in range(5):
        torch.empty(BIG).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(BIG).fill_(2.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

out = {"default": faults()}
with large_tensor_heap() as a:
    out["inside"] = faults()
    with large_tensor_heap() as b:
        pass
    out["inside_after_nested"] = faults()
out["active"] = [a, b]
print(json.dumps(out))
"""


@glibc_only
def test_freed_large_tensors_are_reused_inside_a_run_and_nesting_keeps_it():
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["active"] == [True, True]
    # glibc's default maps a fresh 48 MiB every time: at least one fault per 2 MiB huge page (24), 12288 with
    # 4 KiB pages; inside a run the freed block is reused, already mapped
    assert r["default"] >= 24, r
    assert r["inside"] * 4 < r["default"] and r["inside_after_nested"] * 4 < r["default"], r


def test_off_switch_and_user_settings_leave_malloc_alone(monkeypatch):
    with large_tensor_heap(enabled=False) as active:
        assert not active
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert user_malloc_settings()
    with large_tensor_heap() as active:
        assert not active
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=65536")
    assert user_malloc_settings()


@pytest.mark.parametrize("enabled", [True, False])
def test_trainer_records_whether_it_trained_with_the_heap(enabled):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.05, progress="none", tune_threads=False,
                      large_tensor_heap=enabled)
    row = Trainer(TinyNet(), make_data(32), make_data(16, seed=1), cfg).fit()
    expected = enabled and glibc_malloc() is not None and not user_malloc_settings()
    assert row["large_tensor_heap"] is expected


def test_evaluate_runs_inside_the_setting_on_cpu_and_obeys_its_switch(monkeypatch):
    import contextlib

    from mbconv.train import evaluate, loops

    seen = []

    @contextlib.contextmanager
    def spy(enabled=True):
        seen.append(enabled)
        yield enabled

    monkeypatch.setattr(loops, "large_tensor_heap", spy)
    model, data = TinyNet(), make_data(16)
    a = evaluate(model, data, batch_size=8)
    b = evaluate(model, data, batch_size=8, heap=False)
    assert seen == [True, False] and a == b
