"""Stability: gradient profiles, Jacobian spectra, condition numbers and signal propagation on any `nn.Module`.

Exploding/vanishing gradients are framed as a product of block Jacobians (1.05^100 ~ 131,
0.95^100 ~ 0.006) and measures stability by how spread out the singular values of that product are. The tools:

- **Profiles through hooks** (any module whose blocks can be found, see `find_blocks`):
  `gradient_profile` (per-block parameter-gradient and activation-gradient norms), `signal_propagation`
  (per-block activation statistics: Brock et al.'s signal propagation plots).
- **Jacobians of any map** `f: Tensor -> Tensor` at a point (one sample), with `torch.func`:
  `JacobianOperator` (Jv by JVP, J^T u by VJP, both batched with vmap), `jacobian` (exact, where small),
  `power_iteration` and `lanczos_svals` (Golub-Kahan-Lanczos bidiagonalisation, full reorthogonalisation) for
  the extreme singular values where J is large, `hutchinson_mean_sq` (mean sigma^2 = ||J||_F^2 / n from random
  probes), `log_norm_stats` (Var[log ||J u||^2] over inputs and random unit directions u; Hanin & Nica),
  `spectrum_stats` (sigma_max, sigma_min, kappa, std log sigma, Pennington's spread), `condition_number`.
- **Network views**: `record_blocks` (each block's input and output), `square_runs` (chains of blocks that map a
  shape to itself: their Jacobian is square, so kappa is finite), `logits_spectrum` (the input -> logits
  Jacobian, whose nonzero spectrum has at most `num_classes` values; its kappa is sigma_1 / sigma_K),
  `network_condition` and `block_table` (what `mbconv stability` prints), `effective_receptive_field`.
- **Surgery and comparisons**: `calibrate_batchnorm`, `strip_batchnorm`, `zero_init_residual_gamma`, and the
  equal-cost scaling comparison of Experiment D and the tour (`comparison_base_spec`, `build_variant`,
  `trunk_stats`).
- **Known answers**: `circular_conv_singular_values` (Sedghi et al. 2019: a circular convolution's singular
  values are those of the per-frequency C_out x C_in matrices of the kernel's DFT).

Jacobians are taken in eval mode (BatchNorm is then a fixed per-channel affine map), optionally with BatchNorm
folded into the convs (exact in eval mode and ~2-5x faster through `torch.func`).
The end-to-end input -> logits Jacobian of a classifier is rank-deficient over its input space (global pooling,
strides), so its "condition number" here is the ratio of its extreme *nonzero* singular values; square
stage maps give the classical kappa (docs/claims/d_scaling_conditioning.md).

One module per concern: `jacobian` (operators and spectra of any map), `blocks` (finding and recording blocks,
per-block profiles), `network` (network-level views), `surgery`, `comparison`. This package re-exports them all.
"""

from __future__ import annotations

from .blocks import (
    BlockIO,
    chain,
    find_blocks,
    gradient_profile,
    record_blocks,
    signal_propagation,
    square_runs,
)
from .comparison import VARIANTS, build_variant, comparison_base_spec, sum_inverse_width, trunk_stats
from .jacobian import (
    JacobianOperator,
    MapFn,
    circular_conv_singular_values,
    condition_number,
    hutchinson_mean_sq,
    jacobian,
    lanczos_svals,
    log_norm_stats,
    power_iteration,
    spectrum_stats,
)
from .network import (
    block_table,
    effective_receptive_field,
    format_block_table,
    logits_spectrum,
    network_condition,
    prepare_model,
)
from .surgery import calibrate_batchnorm, strip_batchnorm, zero_init_residual_gamma

__all__ = [
    "JacobianOperator", "MapFn", "jacobian", "power_iteration", "lanczos_svals", "hutchinson_mean_sq",
    "log_norm_stats", "spectrum_stats", "condition_number", "circular_conv_singular_values", "find_blocks",
    "record_blocks", "BlockIO", "square_runs", "chain", "gradient_profile", "signal_propagation",
    "logits_spectrum", "network_condition", "block_table", "format_block_table", "effective_receptive_field",
    "prepare_model", "strip_batchnorm", "zero_init_residual_gamma", "trunk_stats", "VARIANTS",
    "comparison_base_spec", "build_variant", "sum_inverse_width", "calibrate_batchnorm",
]
