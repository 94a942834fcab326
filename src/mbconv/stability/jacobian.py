"""Jacobians of any map `f: Tensor -> Tensor` at a point, as linear operators, and their singular values.

`JacobianOperator` (Jv by JVP, J^T u by VJP, both batched with vmap), `jacobian` (exact, where small),
`power_iteration` and `lanczos_svals` (Golub-Kahan-Lanczos bidiagonalisation, full reorthogonalisation) for the
extreme singular values where J is large, `hutchinson_mean_sq` (mean sigma^2 from random probes),
`log_norm_stats` (Var[log ||J u||^2]; Hanin & Nica), `spectrum_stats`, `condition_number`, and the known answer
`circular_conv_singular_values` (Sedghi et al. 2019).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.func import jvp, vjp, vmap

__all__ = [
    "MapFn", "JacobianOperator", "jacobian", "power_iteration", "lanczos_svals", "hutchinson_mean_sq",
    "log_norm_stats", "spectrum_stats", "condition_number", "circular_conv_singular_values",
]

MapFn = Callable[[torch.Tensor], torch.Tensor]


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
