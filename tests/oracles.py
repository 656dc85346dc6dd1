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
