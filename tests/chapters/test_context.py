"""chapters/context.py: the thread-count block the chapters run in."""

import pytest
import torch

from mbconv.chapters.context import torch_threads


def test_torch_threads_sets_and_restores_even_on_error():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with torch_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(target):
        raise RuntimeError("chapter failed")
    assert torch.get_num_threads() == before
