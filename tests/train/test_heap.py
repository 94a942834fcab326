"""Large tensors from the heap during training (mbconv.train.heap): the setting changes how often a large tensor's
memory is faulted in, nests, stands down for the user's own malloc settings, and the Trainer records it."""

from __future__ import annotations

import resource
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
BIG = (48 << 20) // 4  # float32 elements of a 48 MiB tensor: above glibc's largest adaptive mmap threshold


def faults_of_a_repeated_allocation() -> int:
    """Minor page faults of filling a 48 MiB tensor right after equal ones were allocated, touched and freed (two:
    the first may grow the heap past a block that the aligned allocation then does not fit)."""
    for _ in range(2):
        torch.empty(BIG).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(BIG).fill_(2.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc_only
def test_freed_large_tensors_are_reused_inside_and_mapped_afresh_after():
    with large_tensor_heap() as active:
        inside = faults_of_a_repeated_allocation()
    after = faults_of_a_repeated_allocation()
    assert active
    # a fresh 48 MiB mapping faults in at least one page per 2 MiB huge page (24) and, with 4 KiB pages, 12288;
    # reused heap memory is already mapped
    assert after >= 24 and inside * 4 < after, (inside, after)


@glibc_only
def test_nested_runs_keep_the_setting_until_the_outermost_ends():
    with large_tensor_heap() as outer:
        with large_tensor_heap() as inner:
            pass
        still = faults_of_a_repeated_allocation()
    after = faults_of_a_repeated_allocation()
    assert outer and inner and still * 4 < after, (still, after)


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
