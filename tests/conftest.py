"""Test-wide settings: one intra-op thread per pytest-xdist worker (2 workers share 2 cores)."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def graph_nodes():
    """A function: the class names of the autograd nodes behind a tensor, one per node (which Functions a step ran,
    and how often)."""

    def names(t: torch.Tensor) -> list[str]:
        seen, out, todo = set(), [], [t.grad_fn]
        while todo:
            fn = todo.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            out.append(type(fn).__name__)
            todo.extend(f for f, _ in fn.next_functions)
        return out

    return names
