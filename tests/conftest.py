"""Test-wide settings: one intra-op thread per pytest-xdist worker (2 workers share 2 cores)."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def graph_nodes():
    """A function: the set of autograd node class names behind a tensor (which Functions a step ran)."""

    def names(t: torch.Tensor) -> set[str]:
        seen, out, todo = set(), set(), [t.grad_fn]
        while todo:
            fn = todo.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            out.add(type(fn).__name__)
            todo.extend(f for f, _ in fn.next_functions)
        return out

    return names
