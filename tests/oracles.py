"""Independent float64 NumPy oracles: penalties written from their definitions and a brute-force 1-D minimiser.

Nothing here calls proxgen_jax: the tests compare the library against these.
"""

from __future__ import annotations

import numpy as np


def penalty(kind: str, x: np.ndarray, lam, q=None, gamma=None, levels=(-1.0, 1.0)) -> np.ndarray:
    """Elementwise ``λ·r(x)`` straight from the definitions (float64)."""
    x = np.asarray(x, np.float64)
    t = np.abs(x)
    if kind == "l0":
        return lam * (x != 0)
    if kind == "l1":
        return lam * t
    if kind == "lq":
        return lam * np.where(t > 0, np.abs(x) ** q, 0.0) if q > 0 else lam * (x != 0)
    if kind == "mcp":
        return np.where(t <= gamma * lam, lam * t - t * t / (2 * gamma), gamma * lam * lam / 2)
    if kind == "scad":
        mid = (2 * gamma * lam * t - t * t - lam * lam) / (2 * (gamma - 1))
        return np.where(t <= lam, lam * t, np.where(t <= gamma * lam, mid, (gamma + 1) * lam * lam / 2))
    if kind == "quant":
        lev = np.asarray(levels, np.float64)
        dist = np.min(np.abs(x[..., None] - lev), axis=-1)
        if q == 0:
            return lam * (dist != 0)
        return lam * np.where(dist > 0, dist ** q, 0.0)
    raise ValueError(kind)


def objective(kind, x, z, a, lam, **kw):
    x = np.asarray(x, np.float64)
    return penalty(kind, x, lam, **kw) + (x - z) ** 2 / (2 * a)


def brute_force_prox(kind, z, a, lam, *, grid=2001, golden=120, **kw):
    """Global minimiser of ``λ r(x) + (x − z)²/(2a)`` per sample, by grid search plus golden refinement.

    The minimiser lies in the hull of ``z`` and the kinks of ``r`` (0, and the levels for quantisation): moving
    beyond it raises both terms. Candidates: a uniform grid over that hull, the kinks and ``z`` themselves;
    the best grid cell is then refined by golden-section search.
    """
    z = np.asarray(z, np.float64)
    a = np.asarray(a, np.float64) * np.ones_like(z)
    lam = np.asarray(lam, np.float64) * np.ones_like(z)
    kinks = [0.0] if kind != "quant" else list(kw.get("levels", (-1.0, 1.0)))
    lo = np.minimum(z, min(kinks))
    hi = np.maximum(z, max(kinks))
    s = np.linspace(0.0, 1.0, grid)
    xs = lo[:, None] + (hi - lo)[:, None] * s[None, :]
    cand = np.concatenate([xs, np.repeat(np.asarray(kinks)[None, :], len(z), 0), z[:, None]], axis=1)
    f = objective(kind, cand, z[:, None], a[:, None], lam[:, None], **kw)
    best = np.argmin(f, axis=1)
    xbest = cand[np.arange(len(z)), best]
    fbest = f[np.arange(len(z)), best]
    # Golden-section refinement in the grid cell pair around each grid point's best neighbour.
    h = (hi - lo) / (grid - 1)
    gi = np.clip(np.argmin(f[:, :grid], axis=1), 0, grid - 1)
    left = np.maximum(lo + (gi - 1) * h, lo)
    right = np.minimum(lo + (gi + 1) * h, hi)
    g = (np.sqrt(5.0) - 1) / 2
    for _ in range(golden):
        c = right - g * (right - left)
        d = left + g * (right - left)
        move_left = objective(kind, c, z, a, lam, **kw) < objective(kind, d, z, a, lam, **kw)
        right = np.where(move_left, d, right)
        left = np.where(move_left, left, c)
    xr = 0.5 * (left + right)
    fr = objective(kind, xr, z, a, lam, **kw)
    better = fr < fbest
    return np.where(better, xr, xbest), np.where(better, fr, fbest)


def representable_reference(kind, x_ref, z, a, lam, dtype, *, worse=False, **kw):
    """The best objective a ``dtype`` answer can reach: ``F`` at the two ``dtype`` neighbours of ``x_ref``
    (with ``worse=True``: the larger of the two, i.e. what rounding the exact minimiser either way gives).

    With ``a`` down to 1e-12 an error of one float32 ulp in ``x`` costs ``ulp²/(2a)``, which can exceed the
    whole objective; no float32 answer does better than the representable point nearest the minimiser.
    """
    x_ref = np.asarray(x_ref, np.float64)
    xd = x_ref.astype(dtype)
    lo = np.where(xd.astype(np.float64) > x_ref, np.nextafter(xd, dtype(-np.inf)), xd)
    hi = np.where(xd.astype(np.float64) < x_ref, np.nextafter(xd, dtype(np.inf)), xd)
    f_lo = objective(kind, lo.astype(np.float64), z, a, lam, **kw)
    f_hi = objective(kind, hi.astype(np.float64), z, a, lam, **kw)
    return np.maximum(f_lo, f_hi) if worse else np.minimum(f_lo, f_hi)


def relative_gap(kind, x, z, a, lam, f_ref, **kw):
    """``(F(x) − F_ref) / max(|F_ref|, tiny)``, all in float64."""
    f = objective(kind, np.asarray(x, np.float64), z, a, lam, **kw)
    return (f - f_ref) / np.maximum(np.abs(f_ref), 1e-300)


def scale_fit_enumerated(z, c, levels):
    """``min_{s ≥ 0, ℓ ∈ L^n} Σ c (z − s ℓ)²`` by enumerating every assignment ``ℓ`` (float64; ``|L|^n`` rows).

    Returns ``(s*, cost*)``. For each assignment the best ``s`` is ``max(0, Σ c z ℓ / Σ c ℓ²)``.
    """
    import itertools

    z, c = np.asarray(z, np.float64).ravel(), np.asarray(c, np.float64).ravel()
    lev = np.asarray(list(itertools.product(np.asarray(levels, np.float64), repeat=z.size)))
    num, den = lev @ (c * z), (lev * lev) @ c
    s = np.where(den > 0, np.maximum(num / np.where(den > 0, den, 1), 0), 0)
    cost = np.sum(c * (z - s[:, None] * lev) ** 2, axis=1)
    i = int(np.argmin(cost))
    return s[i], cost[i]


def scale_fit_breakpoints(z, c, levels):
    """The exact global ``min_{s > 0} Σ c (z − s·ℓ(z/s))²`` for any grid (float64): between the breakpoints
    ``s = |2 z_i / (ℓ_k + ℓ_{k+1})|`` the nearest-level assignment is constant and the cost a quadratic in ``s``,
    minimised at its clipped vertex. Returns ``(s*, cost*)``."""
    z, c = np.asarray(z, np.float64).ravel(), np.asarray(c, np.float64).ravel()
    lev = np.sort(np.asarray(levels, np.float64))
    import itertools

    mids = (lev[:-1] + lev[1:]) / 2
    bps = (z[:, None] / np.where(mids != 0, mids, np.inf)[None, :]).ravel()
    bps = np.unique(np.concatenate([[0.0], bps[np.isfinite(bps) & (bps > 0)], [np.inf]]))

    def cost(s):
        near = lev[np.argmin(np.abs(z[:, None] / s - lev[None, :]), axis=1)]
        return np.sum(c * (z - s * near) ** 2), near

    best = (np.inf, None)
    for lo, hi in itertools.pairwise(bps):
        mid = lo + (hi - lo) / 2 if np.isfinite(hi) else 2 * lo + 1
        _, near = cost(mid)
        den = np.sum(c * near * near)
        s = np.sum(c * z * near) / den if den > 0 else mid
        s = min(max(s, lo), hi) if np.isfinite(hi) else max(s, lo)
        for cand in (s, mid):
            if cand > 0:
                f, _ = cost(cand)
                if f < best[0]:
                    best = (f, cand)
    return best[1], best[0]


def numpy_algorithm1(theta0, grads, kind, kw, *, lr, lam, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    """Algorithm 1 with Adam's C_t = √v̂_t (bias-corrected), δ = eps, in float64 NumPy; returns the trajectory.

    Line 8 (the preconditioned prox) is solved coordinate by coordinate by :func:`brute_force_prox`. With
    ``weight_decay`` the order of the reference ProxGen optimizers (AdamW-style, decoupled): first
    ``θ ← θ(1 − lr·wd)``, then the Adam direction and the prox from that point.
    """
    theta = np.asarray(theta0, np.float64).copy()
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    traj = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        metric = np.sqrt(v / (1 - b2**t)) + eps
        theta = theta * (1 - lr * weight_decay)
        z = theta - lr * (m / (1 - b1**t)) / metric
        theta, _ = brute_force_prox(kind, z, lr / metric, lam, grid=4001, **kw)
        traj.append(theta.copy())
    return np.stack(traj)


def group_prox_bisection(z, a, mu):
    """Group ℓ1,2 prox in a diagonal metric; rows of ``z`` are groups: ``argmin_x μ‖x‖₂ + Σ_i (x_i − z_i)²/(2a_i)``.

    Zero iff ‖z/a‖ ≤ μ; else x = z ρ/(ρ + μa), ρ by bisection on Σ z²/(ρ+μa)² = 1 (1100 halvings at most).
    """
    z, a = np.asarray(z, np.float64), np.asarray(a, np.float64)
    mu = np.broadcast_to(np.asarray(mu, np.float64), (z.shape[0],))
    b = mu[:, None] * a
    lo, hi = np.zeros(len(z)), np.linalg.norm(z, axis=1)
    for _ in range(1100):  # bisection on Σ z²/(ρ+b)² = 1 until the bracket stops shrinking
        mid = 0.5 * (lo + hi)
        if np.all((mid == lo) | (mid == hi)):
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            big = np.sum((z / (mid[:, None] + b)) ** 2, axis=1) > 1
        lo, hi = np.where(big, mid, lo), np.where(big, hi, mid)
    rho = 0.5 * (lo + hi)
    zero = np.linalg.norm(z / a, axis=1) <= mu
    x = z * (rho[:, None] / (rho[:, None] + b))
    return np.where(zero[:, None], 0.0, x)


def group_objective(x, z, a, mu):
    """Per group (row): ``μ‖x‖₂ + Σ_i (x_i − z_i)²/(2a_i)`` in float64."""
    x, z, a = (np.asarray(v, np.float64) for v in (x, z, a))
    return np.asarray(mu, np.float64) * np.linalg.norm(x, axis=1) + 0.5 * np.sum((x - z) ** 2 / a, axis=1)
