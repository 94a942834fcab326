"""Test-wide settings: one intra-op thread per pytest-xdist worker (2 workers share 2 cores)."""

import torch

torch.set_num_threads(1)
