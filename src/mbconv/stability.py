"""Stability: gradient profiles, Jacobian spectra, condition numbers and signal propagation on any `nn.Module`.

The design frames exploding/vanishing gradients as a product of block Jacobians (1.05^100 ~ 131,
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
  `network_condition` and `block_table` (what `mbconv stability` prints).
- **Known answers**: `circular_conv_singular_values` (Sedghi et al. 2019: a circular convolution's singular
  values are those of the per-frequency C_out x C_in matrices of the kernel's DFT).

Jacobians are taken in eval mode (BatchNorm is then a fixed per-channel affine map), optionally with BatchNorm
folded into the convs (`mbconv.deploy.fuse_bn`, exact in eval mode and ~2-5x faster through `torch.func`).
The end-to-end input -> logits Jacobian of a classifier is rank-deficient over its input space (global pooling,
strides), so its "condition number" here is the ratio of its extreme *nonzero* singular values; square
stage maps give the classical kappa (science.md §4, "Conditioning").
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp, vjp, vmap

from .layers import ConvBlock, FusedMBConv, MBConv

__all__ = [
    "JacobianOperator", "jacobian", "power_iteration", "lanczos_svals", "hutchinson_mean_sq", "log_norm_stats",
    "spectrum_stats", "condition_number", "circular_conv_singular_values", "find_blocks", "record_blocks",
    "BlockIO", "square_runs", "chain", "gradient_profile", "signal_propagation", "logits_spectrum",
    "network_condition", "block_table", "format_table", "effective_receptive_field", "prepare_model",
    "strip_batchnorm", "zero_init_residual_gamma", "trunk_stats", "VARIANTS", "comparison_base_spec",
    "build_variant", "sum_inverse_width", "calibrate_batchnorm",
]

MapFn = Callable[[torch.Tensor], torch.Tensor]
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# ----------------------------------------------------------------------------------------------------------
# Jacobian of a map at a point, as a linear operator
# ----------------------------------------------------------------------------------------------------------
class JacobianOperator:
    """The Jacobian J of `f` at `x` (any shapes; flattened internally) as a linear operator.

    `mv(v)` = J v (forward-mode JVP), `rmv(u)` = J^T u (reverse-mode VJP; the forward pass is done once here and
    its graph reused for every call), `mm`/`rmm` apply them to the rows of a matrix with vmap. `shape` is
    (d_out, d_in). `f` should be deterministic (eval mode): it is called once per JVP.
    """

    def __init__(self, f: MapFn, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {type(x).__name__}")
        self.x = x.detach()
        shape = self.x.shape
        self._f = lambda z: f(z.reshape(shape)).reshape(-1)
        self._xf = self.x.reshape(-1)
        with torch.no_grad():  # torch.func ignores an outer no_grad; this keeps parameters out of any graph
            out, self._vjp = vjp(self._f, self._xf)
        self.out = out.detach()
        self.shape = (self.out.numel(), self._xf.numel())
        self.dtype = self._xf.dtype

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return jvp(self._f, (self._xf,), (v,))[1]

    def rmv(self, u: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._vjp(u)[0]

    def mm(self, v: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """J applied to each row of `v` (n, d_in) -> (n, d_out)."""
        with torch.no_grad():
            fn = vmap(lambda t: jvp(self._f, (self._xf,), (t,))[1])
            return torch.cat([fn(c) for c in v.split(chunk)]) if len(v) else v.new_zeros(0, self.shape[0])

    def rmm(self, u: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """J^T applied to each row of `u` (n, d_out) -> (n, d_in)."""
        with torch.no_grad():
            fn = vmap(lambda t: self._vjp(t)[0])
            return torch.cat([fn(c) for c in u.split(chunk)]) if len(u) else u.new_zeros(0, self.shape[1])


def _op(f_or_op: MapFn | JacobianOperator, x: torch.Tensor | None) -> JacobianOperator:
    if isinstance(f_or_op, JacobianOperator):
        return f_or_op
    if x is None:
        raise ValueError("x (the point at which to take the Jacobian) is required with a function")
    return JacobianOperator(f_or_op, x)


def jacobian(f: MapFn | JacobianOperator, x: torch.Tensor | None = None, chunk: int = 64,
             max_elems: int = 64_000_000) -> torch.Tensor:
    """The exact Jacobian (d_out, d_in) of `f` at `x`: rows by batched VJPs when d_out <= d_in, else columns by
    batched JVPs. Raises ValueError when it would have more than `max_elems` entries (use `lanczos_svals`)."""
    op = _op(f, x)
    d_out, d_in = op.shape
    if d_out * d_in > max_elems:
        raise ValueError(f"Jacobian of size {d_out} x {d_in} exceeds max_elems={max_elems}; use lanczos_svals "
                         "or power_iteration for its extreme singular values")
    if d_out <= d_in:
        return op.rmm(torch.eye(d_out, dtype=op.dtype, device=op.out.device), chunk)
    return op.mm(torch.eye(d_in, dtype=op.dtype, device=op.out.device), chunk).T


def power_iteration(f: MapFn | JacobianOperator, x: torch.Tensor | None = None, iters: int = 100,
                    tol: float = 1e-7, restarts: int = 1, seed: int = 0) -> dict[str, Any]:
    """sigma_max of J by power iteration on J^T J (one JVP and one VJP per step); the error of sigma^2 decays
    as (sigma_2 / sigma_1)^(2k). Returns {'sigma_max', 'iters', 'converged', 'v'} (best of `restarts`)."""
    op = _op(f, x)
    gen = torch.Generator().manual_seed(seed)
    best: dict[str, Any] = {"sigma_max": -1.0}
    for _ in range(max(1, restarts)):
        v = torch.randn(op.shape[1], generator=gen, dtype=op.dtype).to(op.out.device)
        v /= v.norm()
        sigma, converged, k = 0.0, False, 0
        for k in range(1, iters + 1):
            w = op.rmv(op.mv(v))
            lam = float(v @ w)  # Rayleigh quotient = sigma^2 estimate
            n = w.norm()
            if n == 0:
                sigma, converged = 0.0, True
                break
            v = w / n
            new = math.sqrt(max(lam, 0.0))
            if k > 1 and abs(new - sigma) <= tol * max(new, 1e-300):
                sigma, converged = new, True
                break
            sigma = new
        if sigma > best["sigma_max"]:
            best = {"sigma_max": sigma, "iters": k, "converged": converged, "v": v}
    return best


def lanczos_svals(f: MapFn | JacobianOperator, x: torch.Tensor | None = None, k: int = 30, seed: int = 0,
                  side: str = "auto", tol: float = 0.0) -> dict[str, Any]:
    """Ritz singular values of J from k steps of Golub-Kahan-Lanczos bidiagonalisation (one JVP + one VJP per
    step, full reorthogonalisation). The largest converge first; the smallest Ritz value is an *upper* bound
    on sigma_min (so a Ritz kappa is a lower bound) until the process ends early on an invariant subspace,
    which happens after min(d_in, d_out) steps at most: then the values are exact (`exact=True`).

    `side='auto'` starts on the smaller side of J, so a K x D logits Jacobian is exact after K steps. With
    `tol > 0` it stops early once the largest Ritz value changes by less than `tol` (relative) in one step.
    Returns {'svals' (descending), 'steps', 'exact', 'history' (largest Ritz value after each step)}.
    """
    op = _op(f, x)
    d_out, d_in = op.shape
    if side == "auto":
        side = "in" if d_in <= d_out else "out"
    if side not in ("in", "out"):
        raise ValueError(f"invalid side={side!r}: expected 'auto', 'in' or 'out'")
    # Bidiagonalise A (start vector in A's input space); A = J or J^T share singular values.
    a_mv, a_rmv, n_in, n_out = (op.mv, op.rmv, d_in, d_out) if side == "in" else (op.rmv, op.mv, d_out, d_in)
    steps_max = min(k, n_in, n_out)
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(n_in, generator=gen, dtype=op.dtype).to(op.out.device)
    v /= v.norm()
    vs, us, alphas, betas = [v], [], [], []
    eps = torch.finfo(op.dtype).eps
    exact = False
    beta, u_prev = 0.0, None
    history: list[float] = []
    for j in range(steps_max):
        p = a_mv(vs[j])
        if u_prev is not None:
            p = p - beta * u_prev
        p = _reorth(p, us)
        alpha = float(p.norm())
        scale = max(alphas + [alpha, 1e-300])
        if alpha <= 100 * eps * scale:
            exact = True  # A v_j is in span(U): the Krylov space is invariant
            break
        u = p / alpha
        us.append(u)
        alphas.append(alpha)
        if len(alphas) == min(n_in, n_out):
            exact = True
            break
        q = _reorth(a_rmv(u) - alpha * vs[j], vs)
        beta = float(q.norm())
        if beta <= 100 * eps * scale:
            exact = True
            break
        vs.append(q / beta)
        betas.append(beta)
        u_prev = u
        history.append(float(_bidiag_svals(alphas, betas)[0]))
        if tol > 0 and len(history) > 1 and abs(history[-1] - history[-2]) <= tol * history[-1]:
            break
    if not alphas:
        return {"svals": torch.zeros(1, dtype=torch.float64), "steps": 0, "exact": True, "history": []}
    return {"svals": _bidiag_svals(alphas, betas), "steps": len(alphas), "exact": exact, "history": history}


def _bidiag_svals(alphas: list[float], betas: list[float]) -> torch.Tensor:
    """Singular values of the upper-bidiagonal matrix with diagonal `alphas` and superdiagonal `betas`."""
    m = len(alphas)
    b = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        b += torch.diag(torch.tensor(betas[: m - 1], dtype=torch.float64), 1)
    return torch.linalg.svdvals(b)


def _reorth(p: torch.Tensor, basis: list[torch.Tensor]) -> torch.Tensor:
    """Classical Gram-Schmidt twice against `basis` (keeps Lanczos vectors orthogonal in finite precision)."""
    if not basis:
        return p
    q = torch.stack(basis)
    for _ in range(2):
        p = p - q.T @ (q @ p)
    return p


def hutchinson_mean_sq(f: MapFn | JacobianOperator, x: torch.Tensor | None = None, probes: int = 32,
                       seed: int = 0) -> dict[str, float]:
    """Mean squared singular value ||J||_F^2 / min(d_in, d_out) from Rademacher probes z in the output space:
    E||J^T z||^2 = ||J||_F^2 (VJPs are the cheaper direction). For a square J this is Hutchinson's mean sigma^2,
    the per-map "gain" chi of mean-field theory. Returns {'mean_sq', 'stderr'} (stderr of the mean)."""
    op = _op(f, x)
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randint(0, 2, (probes, op.shape[0]), generator=gen) * 2 - 1).to(op.dtype).to(op.out.device)
    sq = op.rmm(z).pow(2).sum(1)
    n = min(op.shape)
    vals = sq / n
    se = float(vals.std() / math.sqrt(probes)) if probes > 1 else float("nan")
    return {"mean_sq": float(vals.mean()), "stderr": se}


def log_norm_stats(f: MapFn, xs: torch.Tensor | Sequence[torch.Tensor], probes: int = 16, seed: int = 0,
                   ) -> dict[str, Any]:
    """Var[log ||J u||^2] over inputs x in `xs` (first axis) and random unit directions u in the input space
    (Gaussian, normalised): the finite-width fluctuation of a product of layer Jacobians (Hanin & Nica 2019),
    which theory says grows with sum_l 1/width_l. Each x is used as a batch of one (shape (1, *x.shape[1:]))
    when `xs` is a tensor. Returns {'mean', 'var', 'n', 'per_input_mean'}."""
    points = [xs[i:i + 1] for i in range(len(xs))] if isinstance(xs, torch.Tensor) else list(xs)
    if not points:
        raise ValueError("log_norm_stats needs at least one input")
    gen = torch.Generator().manual_seed(seed)
    logs, per = [], []
    for x in points:
        op = JacobianOperator(f, x)
        u = torch.randn(probes, op.shape[1], generator=gen, dtype=op.dtype).to(op.out.device)
        u /= u.norm(dim=1, keepdim=True)
        ln = torch.log(op.mm(u).pow(2).sum(1).clamp_min(1e-300)).double()
        logs.append(ln)
        per.append(float(ln.mean()))
    allv = torch.cat(logs)
    return {"mean": float(allv.mean()), "var": float(allv.var()) if len(allv) > 1 else 0.0, "n": len(allv),
            "per_input_mean": per}


def spectrum_stats(svals: torch.Tensor, zero_tol: float = 1e-12) -> dict[str, float]:
    """Summary of a singular-value spectrum: sigma_max, sigma_min, kappa, mean sigma^2, std of log sigma,
    Pennington's spread <sigma^4>/<sigma^2>^2 - 1, and how many values are (numerically) zero
    (sigma < zero_tol * sigma_max; excluded from the log statistics)."""
    s = torch.as_tensor(svals, dtype=torch.float64).flatten().abs()
    if s.numel() == 0:
        raise ValueError("empty spectrum")
    smax = float(s.max())
    nz = s[s > zero_tol * smax] if smax > 0 else s[:0]
    smin = float(s.min())
    m2 = float((s**2).mean())
    return {
        "n": int(s.numel()), "sigma_max": smax, "sigma_min": smin,
        "kappa": smax / smin if smin > 0 else math.inf,
        "mean_sq": m2, "std_log_sigma": float(nz.log().std()) if nz.numel() > 1 else 0.0,
        "mean_log_sigma": float(nz.log().mean()) if nz.numel() else -math.inf,
        "spread": float((s**4).mean()) / m2**2 - 1.0 if m2 > 0 else math.nan,
        "zeros": int(s.numel() - nz.numel()),
    }


def condition_number(f: MapFn | JacobianOperator, x: torch.Tensor | None = None, exact_limit: int = 4096,
                     k: int = 40, seed: int = 0) -> dict[str, Any]:
    """kappa = sigma_max / sigma_min of J (over its min(d_in, d_out) singular values) with the spectrum stats.

    Exact SVD when min(d_in, d_out) <= exact_limit (and the Jacobian fits in memory); otherwise k Lanczos steps,
    in which case sigma_max is accurate but the Ritz sigma_min is an upper bound, so kappa is a lower bound
    (`method='lanczos'`, `exact=False`).
    """
    op = _op(f, x)
    d_out, d_in = op.shape
    if min(d_out, d_in) <= exact_limit and d_out * d_in <= 64_000_000:
        s = torch.linalg.svdvals(jacobian(op).double())
        return {**spectrum_stats(s), "method": "exact", "exact": True, "svals": s}
    r = lanczos_svals(op, k=k, seed=seed)
    st = spectrum_stats(r["svals"])
    return {**st, "method": "lanczos", "exact": r["exact"], "steps": r["steps"], "svals": r["svals"]}


def circular_conv_singular_values(weight: torch.Tensor, size: int | Sequence[int], groups: int = 1
                                  ) -> torch.Tensor:
    """Singular values (descending) of a stride-1 convolution with circular padding on a `size` grid.

    The operator is block-diagonalised by the DFT: its singular values are the union over frequencies w of the
    singular values of K_hat(w), the (C_out/groups x C_in/groups) matrices of the kernel's DFT per group
    (Sedghi, Gupta & Long 2019). For a depthwise conv (groups = C) these are |K_hat_c(w)|. Works for 1-D/2-D/3-D
    weights (C_out, C_in/groups, *k); the kernel must fit in the grid.
    """
    w = torch.as_tensor(weight).detach().double()
    dims = w.ndim - 2
    size = (size,) * dims if isinstance(size, int) else tuple(size)
    if len(size) != dims or any(k > n for k, n in zip(w.shape[2:], size)):
        raise ValueError(f"invalid size={size!r} for a {dims}-D kernel of shape {tuple(w.shape)}")
    if w.shape[0] % groups:
        raise ValueError(f"invalid groups={groups} for {w.shape[0]} output channels")
    # Kernel taps placed on the grid; the DFT sign/centring only changes phases, never singular values.
    kh = torch.fft.fftn(w, s=size, dim=tuple(range(2, 2 + dims)))
    cout_g = w.shape[0] // groups
    out = []
    for g in range(groups):
        blk = kh[g * cout_g:(g + 1) * cout_g]  # (cout_g, cin_g, *size)
        mats = blk.permute(*range(2, 2 + dims), 0, 1).reshape(-1, cout_g, w.shape[1])
        out.append(torch.linalg.svdvals(mats).flatten())
    return torch.cat(out).sort(descending=True).values


# ----------------------------------------------------------------------------------------------------------
# Blocks of any module, recorded with hooks
# ----------------------------------------------------------------------------------------------------------
def _is_block(m: nn.Module) -> bool:
    """Our block classes, or a foreign (timm-style) block found by its submodule names."""
    if isinstance(m, (MBConv, FusedMBConv, ConvBlock)):
        return True
    names = {n for n, _ in m.named_children()}
    return bool(names & {"conv_pwl", "conv_dw"}) or {"depthwise", "project"} <= names


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every outermost block of `model` in registration (= forward, for our nets) order."""
    out: list[tuple[str, nn.Module]] = []
    inside: list[str] = []
    for name, m in model.named_modules():
        if any(name.startswith(p + ".") for p in inside):
            continue
        if m is not model and _is_block(m):
            out.append((name, m))
            inside.append(name)
    return out


@dataclass
class BlockIO:
    """One block's name, module, input and output of a recorded forward pass (detached)."""

    index: int
    name: str
    module: nn.Module
    input: torch.Tensor
    output: torch.Tensor
    has_skip: bool

    @property
    def square(self) -> bool:
        return tuple(self.input.shape) == tuple(self.output.shape)


@contextlib.contextmanager
def _mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Temporarily run `model` in 'eval', 'train', or 'batchnorm' mode (eval, but BatchNorm normalises with the
    batch's statistics as in training, without dropout/drop-path noise); buffers are restored afterwards."""
    if mode not in ("eval", "train", "batchnorm"):
        raise ValueError(f"invalid mode={mode!r}: expected 'eval', 'train' or 'batchnorm'")
    flags = {m: m.training for m in model.modules()}
    saved = {k: v.clone() for k, v in model.named_buffers()} if mode != "eval" else {}
    try:
        model.train(mode == "train")
        if mode == "batchnorm":
            for m in model.modules():
                if isinstance(m, _BN):
                    m.train()
        yield
    finally:
        if saved:
            with torch.no_grad():
                for k, b in model.named_buffers():
                    if k in saved:
                        b.copy_(saved[k])
        for m, t in flags.items():
            m.training = t


def record_blocks(model: nn.Module, x: torch.Tensor, blocks: list[tuple[str, nn.Module]] | None = None,
                  mode: str = "eval") -> tuple[list[BlockIO], torch.Tensor]:
    """Run `model(x)` once (no grad) and record each block's input and output. Returns (records, model output).
    Raises ValueError when no block is found."""
    blocks = find_blocks(model) if blocks is None else blocks
    if not blocks:
        raise ValueError(f"no MBConv-family blocks found in {type(model).__name__} (looked for MBConv/FusedMBConv/"
                         "ConvBlock or modules with depthwise+project / conv_dw / conv_pwl children)")
    recs: list[BlockIO] = []
    handles = []

    def make_hook(i: int, name: str):
        def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            skip = bool(getattr(m, "has_skip", getattr(m, "has_residual", False)))
            recs.append(BlockIO(i, name, m, inp[0], out, skip))
        return hook

    for i, (name, m) in enumerate(blocks):
        handles.append(m.register_forward_hook(make_hook(i, name)))
    try:
        with torch.no_grad(), _mode(model, mode):
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    return recs, y


def square_runs(records: list[BlockIO]) -> list[list[BlockIO]]:
    """Maximal chains of consecutive blocks that each map a shape to itself and feed each other directly (block
    i+1's input is block i's output tensor). Their composed Jacobian is square, so its kappa is finite."""
    runs: list[list[BlockIO]] = []
    cur: list[BlockIO] = []
    for r in records:
        if r.square and cur and r.input is cur[-1].output:
            cur.append(r)
            continue
        if cur:
            runs.append(cur)
        cur = [r] if r.square else []
    if cur:
        runs.append(cur)
    return runs


def chain(modules: Sequence[nn.Module]) -> MapFn:
    """The map z -> m_k(...m_1(z)) of a list of modules."""
    def f(z: torch.Tensor) -> torch.Tensor:
        for m in modules:
            z = m(z)
        return z
    return f


# ----------------------------------------------------------------------------------------------------------
# Profiles through hooks
# ----------------------------------------------------------------------------------------------------------
def _rms(t: torch.Tensor) -> float:
    return float(t.detach().double().pow(2).mean().sqrt())


def gradient_profile(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
                     loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                     mode: str = "batchnorm", seed: int = 0) -> list[dict[str, Any]]:
    """Per-block gradient norms of a loss on one batch: `param_grad` = ||dL/dtheta_block|| (all parameters of
    the block), `act_grad` = ||dL/dh|| of the block output h per sample (RMS over the batch of the per-sample
    norms), `param_norm`, and their ratio. The loss is `loss_fn(logits, y)` (cross-entropy by default); without
    `y` it is <logits, g> / sqrt(batch) for a fixed Gaussian g (a label-free backward probe).

    `mode` (see `_mode`): 'batchnorm' (default) uses batch statistics as in training without dropout noise;
    'train' or 'eval' as named. The model's grads, modes and buffers are left untouched.
    """
    blocks = find_blocks(model)
    if not blocks:
        raise ValueError(f"no MBConv-family blocks found in {type(model).__name__}")
    outs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, i, o: outs.append(o)) for _, m in blocks]
    try:
        with _mode(model, mode), torch.enable_grad():
            logits = model(x)
            if y is None:
                g = torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed)).to(logits)
                loss = (logits * g).sum() / math.sqrt(len(x))
            else:
                loss = (loss_fn or F.cross_entropy)(logits, y)
            params = [[p for p in m.parameters() if p.requires_grad] for _, m in blocks]
            flat = [p for ps in params for p in ps]
            grads = torch.autograd.grad(loss, outs + flat, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    if len(outs) != len(blocks):
        raise ValueError("a block ran more or less than once per forward; gradient_profile needs one call each")
    act_grads, pgrads = grads[: len(outs)], list(grads[len(outs):])
    rows = []
    for i, ((name, _), h, ag) in enumerate(zip(blocks, outs, act_grads)):
        ps = params[i]
        gs, pgrads = pgrads[: len(ps)], pgrads[len(ps):]
        gn = math.sqrt(sum(float(g.double().pow(2).sum()) for g in gs if g is not None))
        pn = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in ps))
        if ag is None:
            an = 0.0
        else:
            per = ag.detach().double().flatten(1).pow(2).sum(1)
            an = float(per.mean().sqrt())
        rows.append({"index": i, "name": name, "param_grad": gn, "act_grad": an, "param_norm": pn,
                     "grad_to_param": gn / pn if pn > 0 else math.nan, "act_rms": _rms(h),
                     "loss": float(loss.detach())})
    return rows


def signal_propagation(model: nn.Module, x: torch.Tensor, mode: str = "batchnorm") -> list[dict[str, Any]]:
    """Signal propagation plot data (Brock, De & Smith 2021) per block output h (N, C, *spatial):
    `chan_mean_sq` = average over channels of the squared channel mean, `chan_var` = average channel variance,
    `rms`, and for residual blocks `branch_var` = average channel variance of the residual branch (h - input)."""
    recs, _ = record_blocks(model, x, mode=mode)
    rows = []
    for r in recs:
        h = r.output.double()
        dims = [0] + list(range(2, h.ndim))
        row = {"index": r.index, "name": r.name, "chan_mean_sq": float(h.mean(dim=dims).pow(2).mean()),
               "chan_var": float(h.var(dim=dims).mean()), "rms": _rms(h), "has_skip": r.has_skip,
               "branch_var": math.nan, "shape": list(h.shape[1:])}
        if r.has_skip and r.square:
            row["branch_var"] = float((h - r.input.double()).var(dim=dims).mean())
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------
# Network-level views
# ----------------------------------------------------------------------------------------------------------
def prepare_model(model: nn.Module, fold_bn: bool = True, double: bool = False) -> nn.Module:
    """An eval-mode copy for Jacobian work: BatchNorm folded into the convs (`mbconv.deploy.fuse_bn`; exact in
    eval mode, and much faster under torch.func) and optionally float64 (for small nets)."""
    if fold_bn:
        from .deploy import fuse_bn

        m = fuse_bn(model)
    else:
        m = copy.deepcopy(model).eval()
    if double:
        m = m.double()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def logits_spectrum(model: nn.Module, x: torch.Tensor, exact_max: int = 128, k: int = 30, seed: int = 0,
                    tol: float = 0.0) -> dict[str, Any]:
    """Singular values of the input -> output Jacobian of `model` at one sample `x` (batch of one, eval mode).

    With K outputs (classes) this map has at most K nonzero singular values; its condition number is
    sigma_1 / sigma_K. Exact (K VJPs and an SVD) when K <= exact_max; otherwise k Lanczos steps started on the
    output side (sigma_1 accurate, sigma_K an upper bound, kappa a lower bound), stopping early when sigma_1
    changes by less than `tol` (relative) in a step."""
    if x.shape[0] != 1:
        raise ValueError(f"logits_spectrum takes one sample (batch of one), got batch {x.shape[0]}")
    op = JacobianOperator(model, x)
    if op.shape[0] <= exact_max:
        s = torch.linalg.svdvals(jacobian(op).double())
        return {**spectrum_stats(s), "svals": s, "method": "exact", "exact": True}
    r = lanczos_svals(op, k=k, seed=seed, side="out", tol=tol)
    return {**spectrum_stats(r["svals"]), "svals": r["svals"], "method": f"lanczos({r['steps']})",
            "exact": r["exact"], "history": r["history"]}


def network_condition(model: nn.Module, x: torch.Tensor, fold_bn: bool = True, double: bool = False,
                      exact_limit: int = 2048, k: int = 30, seed: int = 0) -> dict[str, Any]:
    """Conditioning of a classifier at one sample: the logits Jacobian (kappa = sigma_1 / sigma_K over its
    nonzero spectrum) and every square run of blocks (`square_runs`: classical kappa of the composed block
    Jacobian, exact up to `exact_limit` dims, else Lanczos). Runs in eval mode on a prepared copy."""
    m = prepare_model(model, fold_bn, double)
    x = x[:1].to(next(m.parameters()).dtype)
    out: dict[str, Any] = {"logits": logits_spectrum(m, x, k=k, seed=seed)}
    recs, _ = record_blocks(m, x)
    runs = []
    for run in square_runs(recs):
        st = condition_number(chain([r.module for r in run]), run[0].input, exact_limit=exact_limit, k=k,
                              seed=seed)
        runs.append({"first": run[0].name, "last": run[-1].name, "blocks": len(run),
                     "dim": run[0].input[0].numel(), **{k2: v for k2, v in st.items() if k2 != "svals"}})
    out["runs"] = runs
    return out


def block_table(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, fold_bn: bool = True,
                double: bool = False, k: int = 15, probes: int = 8, exact_limit: int = 1024, seed: int = 0
                ) -> list[dict[str, Any]]:
    """Per block: gradient norms (`gradient_profile` on the batch `x`, `y`), activation RMS, and the block's own
    Jacobian at sample 0 in eval mode: sigma_max (exact SVD up to `exact_limit` dims, else k Lanczos steps),
    Hutchinson mean sigma^2 (`probes` probes), and kappa for square blocks (exact only)."""
    grads = gradient_profile(model, x, y, seed=seed)
    m = prepare_model(model, fold_bn, double)
    dt = next(m.parameters()).dtype
    recs, _ = record_blocks(m, x[:1].to(dt))
    rows = []
    for g, r in zip(grads, recs):
        op = JacobianOperator(r.module, r.input)
        small = min(op.shape) <= exact_limit and op.shape[0] * op.shape[1] <= 16_000_000
        if small:
            st = spectrum_stats(torch.linalg.svdvals(jacobian(op).double()))
            smax, kappa, how = st["sigma_max"], st["kappa"] if r.square else math.nan, "exact"
        else:
            lz = lanczos_svals(op, k=k, seed=seed)
            smax, kappa, how = float(lz["svals"][0]), math.nan, f"lanczos({lz['steps']})"
        hm = hutchinson_mean_sq(op, probes=probes, seed=seed)
        rows.append({**g, "type": type(r.module).__name__, "in_shape": list(r.input.shape[1:]),
                     "out_shape": list(r.output.shape[1:]), "has_skip": r.has_skip, "sigma_max": smax,
                     "mean_sq": hm["mean_sq"], "kappa": kappa, "method": how})
    return rows


def format_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A plain-text table: `columns` = (key, header, format spec) triples."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        line = []
        for key, _, fmt in columns:
            v = r.get(key)
            if v is None:
                line.append("-")
            elif isinstance(v, float) and not math.isfinite(v):
                line.append("inf" if v > 0 else ("-inf" if v < 0 else "-"))
            elif isinstance(v, (list, tuple)):
                line.append("x".join(str(i) for i in v))
            else:
                line.append(format(v, fmt))
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(line, widths)))
                     for line in cells)


# ----------------------------------------------------------------------------------------------------------
# Receptive field, and surgery for experiments
# ----------------------------------------------------------------------------------------------------------
def effective_receptive_field(features: MapFn, x: torch.Tensor, mass: float = 0.95) -> dict[str, Any]:
    """Effective receptive field (Luo et al. 2016): |d out_centre / d x| summed over channels and averaged over
    the batch, where out_centre is the channel sum of the feature map `features(x)` at its centre location.
    Returns the normalised gradient map and the radius (Chebyshev distance from the input centre, in input
    pixels) containing `mass` of it, also as a fraction of the half-side (`radius_frac` = ERF / FOV)."""
    if not 0 < mass <= 1:
        raise ValueError(f"invalid mass={mass!r}: must be in (0, 1]")
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        fmap = features(x)
        if fmap.ndim < 3:
            raise ValueError(f"features must return a spatial map (N, C, *spatial), got shape {tuple(fmap.shape)}")
        centre = tuple(s // 2 for s in fmap.shape[2:])
        target = fmap[(slice(None), slice(None)) + centre].sum()
        (g,) = torch.autograd.grad(target, x)
    gmap = g.detach().abs().sum(1).mean(0).double()  # spatial map
    gmap = gmap / gmap.sum().clamp_min(1e-300)
    dims = gmap.ndim
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) - (s - 1) / 2 for s in gmap.shape], indexing="ij")
    dist = torch.stack([g.abs() for g in grids]).amax(0) if dims > 1 else grids[0].abs()
    order = torch.argsort(dist.flatten())
    cum = gmap.flatten()[order].cumsum(0)
    idx = int(torch.searchsorted(cum, torch.tensor(mass * float(cum[-1]), dtype=torch.float64)))
    radius = float(dist.flatten()[order][min(idx, cum.numel() - 1)]) + 0.5
    half = max(gmap.shape) / 2
    return {"map": gmap, "radius": radius, "radius_frac": radius / half}


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Set every BatchNorm's running statistics to the statistics of the data `x` (in place; cumulative average
    over batches of `batch_size`), so that eval mode normalises like a training forward on this data.

    At init the running statistics are mean 0 / var 1, which makes eval-mode BN the identity: an eval-mode
    Jacobian of an untrained net would then ignore BN altogether. Calibrating first gives a per-sample Jacobian
    of the map that training actually uses."""
    bns = [m for m in model.modules() if isinstance(m, _BN)]
    if not bns:
        return model
    flags = {m: m.training for m in model.modules()}
    moms = [m.momentum for m in bns]
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: equal weight for every batch
            m.train()
        for chunk in x.split(batch_size):
            model(chunk)
    finally:
        for m, mom in zip(bns, moms):
            m.momentum = mom
        for m, t in flags.items():
            m.training = t
    return model


def strip_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm by Identity, in place (the 'no BN' variant of an experiment). Our convs before
    BN have no bias, so the stripped net has no additive biases outside SE and the classifier."""
    for m in list(model.modules()):
        for cname, child in list(m.named_children()):
            if isinstance(child, _BN):
                setattr(m, cname, nn.Identity())
    return model


def zero_init_residual_gamma(model: nn.Module) -> nn.Module:
    """Zero the BN gamma at the end of every residual branch (Goyal et al. 2017), in place: each residual block
    is then the identity at init (J = I). Finds the branch end by name (`project.bn`, or `conv.bn` of a conv
    block)."""
    for _, m in find_blocks(model):
        if not getattr(m, "has_skip", False):
            continue
        end = getattr(getattr(m, "project", None), "bn", None) or getattr(getattr(m, "conv", None), "bn", None)
        if isinstance(end, _BN):
            nn.init.zeros_(end.weight)
    return model


# ----------------------------------------------------------------------------------------------------------
# Scaling comparisons (Experiment D and the tour's stability chapter)
# ----------------------------------------------------------------------------------------------------------
VARIANTS = {
    "bn_res": "BN + residual (MBConv as designed)",
    "bn_nores": "BN, no residual",
    "nobn_res": "residual, no BN",
    "nobn_nores": "no BN, no residual (plain)",
    "zero_gamma": "BN + residual, last BN gamma of each branch = 0",
}


def comparison_base_spec(width: int = 16, length: int = 40, blocks_per_stage: int = 2, kernel: int = 5,
                         stages: int = 2) -> Any:
    """The small base of the scaling comparisons: a 1-D MBConv-SE net for MNIST-1D (length 40) whose blocks all
    keep the shape (stride 1, `width` channels), so the whole trunk (stem output -> last block) is one square
    map and its exact spectrum is affordable. No head conv (the pooled trunk feeds the classifier), so almost
    all MACs are in blocks and depth-only scaling can hit a MAC target; channel divisor 1 and depth rounding
    'round' let every strategy follow its nominal multipliers closely."""
    from .spec import NetSpec, parse_arch

    block = f"ir_r{blocks_per_stage}_k{kernel}_s1_e4_c{width}_se0.25"
    return NetSpec(stages=parse_arch(";".join([block] * stages)), name=f"mbconv1d_c{width}", dims=1, in_chans=1,
                   num_classes=10, stem_chs=width, stem_kernel=kernel, stem_stride=1, head_type="none", head_chs=0,
                   resolution=length, channel_divisor=1, depth_rounding="round", drop_rate=0.0)


def build_variant(spec: Any, variant: str, seed: int = 0) -> nn.Module:
    """An `MBConvNet` of `spec` (TF init, seeded) in one architectural variant of `VARIANTS`: residuals removed
    through the spec (`skip=False` on every block), BatchNorm removed by surgery (`strip_batchnorm`), or the
    residual branches zero-initialised (`zero_init_residual_gamma`)."""
    from .net import MBConvNet
    from .spec import spec_replace_blocks

    if variant not in VARIANTS:
        raise ValueError(f"invalid variant={variant!r}: expected one of {list(VARIANTS)}")
    if variant.endswith("nores"):
        spec = spec_replace_blocks(spec, lambda si, bi, b: dataclasses.replace(b, skip=False))
    torch.manual_seed(seed)
    model = MBConvNet(spec)
    if variant.startswith("nobn"):
        strip_batchnorm(model)
    if variant == "zero_gamma":
        zero_init_residual_gamma(model)
    return model


def sum_inverse_width(spec: Any) -> float:
    """sum over blocks of 1 / (block output channels): the depth-to-width ratio that governs the fluctuations of a
    product of random layer Jacobians (Hanin & Nica 2019)."""
    from .spec import plan_blocks

    return float(sum(1.0 / p.out_chs for p in plan_blocks(spec)))


def trunk_stats(model: nn.Module, x: torch.Tensor, exact_limit: int = 1500, probes: int = 8, k: int = 40,
                double: bool = True, block_gains: bool = True, seed: int = 0) -> dict[str, Any]:
    """Statistics of the longest square run of blocks (for nets whose blocks all keep the shape: the whole trunk)
    in eval mode with BN folded: the spectrum of its Jacobian at x[0] (exact SVD up to `exact_limit` dims, else
    Lanczos: then sigma_min, kappa and the log statistics are Ritz estimates, `exact=False`), Var/mean of
    log ||J u||^2 over all of `x` and `probes` directions, and per-block Hutchinson gains mean sigma^2 (whose
    product is the "1.05^L" model of the total gain). Returns a dict with 'svals' (descending)."""
    m = prepare_model(model, fold_bn=True, double=double)
    dt = next(m.parameters()).dtype
    recs, _ = record_blocks(m, x.to(dt))
    runs = square_runs(recs)
    if not runs:
        raise ValueError("no square run of blocks: trunk_stats needs blocks that keep their input shape")
    run = max(runs, key=len)
    f = chain([r.module for r in run])
    z = run[0].input
    op = JacobianOperator(f, z[:1])
    d = op.shape[1]
    if d <= exact_limit:
        s = torch.linalg.svdvals(jacobian(op).double())
        exact = True
    else:
        lz = lanczos_svals(op, k=k, seed=seed)
        s, exact = lz["svals"], lz["exact"]
    out: dict[str, Any] = {**spectrum_stats(s), "svals": s, "exact": exact, "dim": d, "blocks": len(run),
                           "first": run[0].name, "last": run[-1].name}
    ln = log_norm_stats(f, z, probes=probes, seed=seed)
    out["log_norm_mean"], out["log_norm_var"] = ln["mean"], ln["var"]
    if block_gains:
        gains = [hutchinson_mean_sq(r.module, r.input[:1], probes=probes, seed=seed)["mean_sq"] for r in run]
        out["block_gains"] = gains
        out["log_gain_product"] = float(sum(math.log(g) for g in gains if g > 0))
    return out
