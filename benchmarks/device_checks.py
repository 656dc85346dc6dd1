"""Correctness smoke tests run *on the default device* (GPU/TPU, or the CPU) against float64 NumPy oracles.

The unit tests establish the mathematics on the CPU; these checks ask whether the device computes the same:

* ``prox_samples`` — the whole fused step (``chain(scale_by_adam_precond(0, 0, bias_correction=False),
  proximal_step(reg, λ, α))``: ``z = θ − α g/c``, ``a = α/c``, ``c = √(g²)+δ``), vmapped over a few hundred random
  ``(θ, g, α, λ)``, against ``tests/oracles.py``'s brute-force global minimiser;
* ``algorithm1`` — 20 Adam + prox steps in float64 on the device against ``tests/oracles.py``'s NumPy Algorithm 1;
* ``platform_dependent`` — the group ℓ1,2 radius solver picks its branch with ``lax.platform_dependent`` (CPU: the
  certified early exit; elsewhere: unrolled Newton steps): both branches, on the device and on the host CPU,
  against the float64 bisection oracle;
* ``bit_kernels`` — the float32 bit-level kernels (``fast_pow.log2_f32/exp2_f32/pow_f32``, the ℓ⅔ inverse cube
  root of ``lq.py``) against float64 NumPy, with the bounds their unit tests use.

Each returns a JSON-able dict with ``passed``. Used by ``accelerator_suite.py``.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import proxgen_jax as pg

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import oracles

R = pg.regularizers
# (name, regularizer, oracle kind, oracle keywords)
ELEMENTWISE = [
    ("l0", R.L0(), "lq", {"q": 0}),
    ("l1", R.L1(), "lq", {"q": 1}),
    ("l1/2", R.Lq(0.5), "lq", {"q": 0.5}),
    ("l2/3", R.Lq(2 / 3), "lq", {"q": 2 / 3}),
    ("lq(q=0.3)", R.Lq(0.3), "lq", {"q": 0.3}),
    ("mcp", R.MCP(3.0), "mcp", {"gamma": 3.0}),
    ("scad", R.SCAD(3.7), "scad", {"gamma": 3.7}),
    ("binary(q=1)", R.binary(1.0), "quant", {"q": 1.0}),
    ("binary(q=1/2)", R.binary(0.5), "quant", {"q": 0.5}),
]
F32_TOL = 1e-5  # relative objective gap, as tests/test_prox_bruteforce.py


def _first_step(reg):
    """``(θ, g, λ, α) ↦ θ₁`` per coordinate: the library's fused step with ``b1 = b2 = 0`` and no bias correction,
    so ``m_t = g``, ``C_t = √(g²)`` and the step solves the 1-D prox at ``z = θ − α g/c``, ``a = α/c``,
    ``c = √(g²) + δ`` — data a float32 NumPy mirror reproduces exactly (λ and α traced)."""
    def step(theta, g, lam, lr):
        tx = optax.chain(pg.scale_by_adam_precond(0.0, 0.0, 1e-8, bias_correction=False),
                         pg.proximal_step(reg, lam, lr))
        p = theta[None]
        updates, _ = tx.update(g[None], tx.init(p), p)
        return optax.apply_updates(p, updates)[0]
    return jax.jit(jax.vmap(step))


def prox_samples(n: int = 300, seed: int = 0) -> dict:
    """The fused first step on the device vs the brute-force minimiser, ``n`` samples per regularizer."""
    rng = np.random.default_rng(seed)
    eps32 = float(np.finfo(np.float32).eps)
    out, passed = {}, True
    for name, reg, kind, kw in ELEMENTWISE:
        theta = (rng.standard_normal(n) * 10 ** rng.uniform(-2, 1, n)).astype(np.float32)
        g = (rng.choice([-1.0, 1.0], n) * 10 ** rng.uniform(-6, 1, n)).astype(np.float32)
        lam = (10 ** rng.uniform(-4, 1, n)).astype(np.float32)
        lr = (10 ** rng.uniform(-3, -0.5, n)).astype(np.float32)
        x = np.asarray(_first_step(reg)(*(jnp.asarray(v) for v in (theta, g, lam, lr))), np.float64)
        c = (np.sqrt(g * g) + np.float32(1e-8)).astype(np.float64)  # the metric, as float32 computes it
        th, g64, lam64, lr64 = (v.astype(np.float64) for v in (theta, g, lam, lr))
        z, a = th - lr64 * g64 / c, lr64 / c
        # The step forms z (or c·z) in float32: a few roundings on the scale of max(|θ|, α|g|/c). Accept the best
        # of z and z ± that, and x within 4 ulps of the minimiser, as tests/test_prox_bruteforce.py does for the
        # fused forms.
        dz = 4 * eps32 * np.maximum(np.abs(th), np.abs(lr64 * g64 / c))
        gaps = []
        for k in (0, -1, 1):
            zk = z + k * dz
            x_bf, _ = oracles.brute_force_prox(kind, zk, a, lam64, **kw)
            f_ref = oracles.representable_reference(kind, x_bf, zk, a, lam64, np.float32, **kw)
            gap = oracles.relative_gap(kind, x, zk, a, lam64, f_ref, **kw)
            gaps.append(np.where(np.abs(x - x_bf) <= 4 * eps32 * np.abs(x_bf), 0.0, gap))
        gap = np.min(gaps, axis=0)
        ok = bool(np.all(np.isfinite(x)) and gap.max() <= F32_TOL)
        out[name] = {"samples": n, "worst_gap": float(gap.max()), "zeros": float(np.mean(x == 0)), "passed": ok}
        passed &= ok
    return {"passed": passed, "rows": out}


def algorithm1(steps: int = 20, names=None) -> dict:
    """``steps`` Adam + prox steps in float64 on the device against NumPy Algorithm 1 (rtol = atol = 1e-6)."""
    out, passed = {}, True
    for name, reg, kind, kw in ELEMENTWISE:
        if names is not None and name not in names:
            continue
        rng = np.random.default_rng(0)
        d, lr, lam = 24, 0.05, 0.05
        theta0 = rng.normal(size=d)
        target = rng.normal(size=d) * rng.choice([0.0, 1.0], d)
        grads, ours = [], []
        with jax.enable_x64(True):
            tx = optax.chain(pg.scale_by_adam_precond(), pg.proximal_step(reg, lam, lr))
            params = jnp.asarray(theta0)
            state = tx.init(params)
            step = jax.jit(lambda p, s, g, tx=tx: tx.update(g, s, p))
            for _ in range(steps):
                g = (np.asarray(params) - target) + 0.3 * rng.normal(size=d)
                grads.append(g)
                updates, state = step(params, state, jnp.asarray(g))
                params = optax.apply_updates(params, updates)
                ours.append(np.asarray(params))
        ref = oracles.numpy_algorithm1(theta0, grads, kind, kw, lr=lr, lam=lam)
        err = float(np.max(np.abs(np.stack(ours) - ref) / (1e-6 + 1e-6 * np.abs(ref))))
        ok = err <= 1.0
        out[name] = {"steps": steps, "max_error_over_tolerance": err, "passed": ok}
        passed &= ok
    return {"passed": passed, "rows": out}


def _groups(rng, groups, n):
    z = rng.standard_normal((groups, n)) * 10 ** rng.uniform(-3, 3, (groups, 1))
    a = 10 ** rng.uniform(-8, 8, (groups, n))
    mu = np.linalg.norm(z / a, axis=1) * rng.uniform(0.2, 1.5, groups)  # zero groups and shrunk ones
    return (v.astype(np.float32).astype(np.float64) for v in (z, a, mu))


def platform_dependent(groups: int = 600, n: int = 24) -> dict:
    """Group ℓ1,2 prox (its radius solver branches on the platform) on the device and on the host CPU."""
    z, a, mu = _groups(np.random.default_rng(5), groups, n)
    f_ref = oracles.group_objective(oracles.group_prox_bisection(z, a, mu), z, a, mu)
    prox = jax.jit(R.GroupL12(group_axes=(1,)).prox)
    args = (np.float32(z), np.float32(a), np.float32(mu[:, None]))
    out, passed = {"device_platform": jax.default_backend()}, True
    cpus = jax.devices("cpu")
    for where, device in (("device", jax.devices()[0]), ("host_cpu", cpus[0] if cpus else None)):
        if device is None:
            continue
        x = np.asarray(prox(*(jax.device_put(v, device) for v in args)), np.float64)
        gap = (oracles.group_objective(x, z, a, mu) - f_ref) / np.abs(f_ref)
        ok = bool(np.all(np.isfinite(x)) and gap.max() <= F32_TOL)
        out[where] = {"platform": device.platform, "worst_gap": float(gap.max()),
                      "zero_groups": float(np.mean(np.all(x == 0, axis=1))), "passed": ok}
        passed &= ok
    out["both_branches"] = out.get("device", {}).get("platform") != out.get("host_cpu", {}).get("platform")
    return {"passed": passed, **out}


def _normal_floats(rng, n):
    t = (10.0 ** rng.uniform(-37.9, 38.5, n)).astype(np.float32)
    powers = np.float32(2.0) ** np.arange(-126, 128, dtype=np.float32)
    t = np.concatenate([t, powers, np.nextafter(powers, np.float32(0)), np.nextafter(powers, np.float32(np.inf))])
    return t[np.isfinite(t) & (t >= np.finfo(np.float32).tiny)].astype(np.float32)


def bit_kernels(n: int = 200_000) -> dict:
    """float32 ``log2``, ``exp2``, ``t^p`` and the inverse cube root on the device vs float64 NumPy."""
    from proxgen_jax.regularizers import fast_pow
    from proxgen_jax.regularizers.lq import _inv_cbrt_f32

    rng = np.random.default_rng(7)
    t = _normal_floats(rng, n)
    t64 = t.astype(np.float64)
    out = {}
    log2 = np.asarray(jax.jit(fast_pow.log2_f32)(jnp.asarray(t)), np.float64)
    err = np.abs(log2 - np.log2(t64)) - 2.0**-24 * np.abs(np.log2(t64))
    out["log2_f32"] = {"max_excess_abs_error": float(err.max()), "bound": 1.5e-7, "passed": bool(err.max() <= 1.5e-7)}
    y = rng.uniform(-126, 127, n).astype(np.float32)
    exp2 = np.asarray(jax.jit(fast_pow.exp2_f32)(jnp.asarray(y)), np.float64)
    rel = np.abs(exp2 / 2.0 ** y.astype(np.float64) - 1)
    out["exp2_f32"] = {"max_rel_error": float(rel.max()), "bound": 1.1e-7, "passed": bool(rel.max() <= 1.1e-7)}
    for p in (-1.7, -4.0 / 3.0, 0.3):
        exact = t64**p
        inside = (exact >= 2.0**-126) & (exact <= 2.0**127)
        ours = np.asarray(jax.jit(lambda t, p=p: fast_pow.pow_f32(t, p))(jnp.asarray(t)), np.float64)
        # The error model of tests/test_fast_pow.py: y = p·log2 t rounded to float32 three times (p, log2, the
        # product) plus log2's 1.5e-7; 2^y carries ln 2 times that absolute error; exp2 adds its 1.1e-7.
        log2t = np.log2(t64)
        err_y = (abs(p) * (np.spacing(np.abs(log2t).astype(np.float32)) / 2 + 1.5e-7)
                 + np.abs(log2t) * abs(float(np.float32(p)) - p) + np.spacing(np.abs(p * log2t).astype(np.float32)) / 2)
        bound = np.log(2) * err_y + 1.2e-7
        rel = np.abs(ours[inside] / exact[inside] - 1)
        out[f"pow_f32(p={p:.4g})"] = {"max_rel_error": float(rel.max()),
                                     "max_over_bound": float(np.max(rel / bound[inside])),
                                     "passed": bool(np.all(rel <= bound[inside]))}
    tc = (10 ** rng.uniform(-30, 30, n)).astype(np.float32)
    num, den = jax.jit(_inv_cbrt_f32)(jnp.asarray(tc))
    rel = np.abs(np.asarray(num, np.float64) / np.asarray(den, np.float64) * np.cbrt(tc.astype(np.float64)) - 1)
    out["inv_cbrt_f32"] = {"max_rel_error": float(rel.max()), "bound": 2.5e-7, "passed": bool(rel.max() <= 2.5e-7)}
    return {"passed": all(v["passed"] for v in out.values()), "kernels": out}


def run_all(*, samples: int = 300, algorithm1_names=None, log=print) -> dict:
    """Every check; an exception in one is recorded (``error``) and counts as a failure."""
    out = {}
    checks = (("prox_samples", lambda: prox_samples(samples)),
              ("algorithm1", lambda: algorithm1(names=algorithm1_names)),
              ("platform_dependent", platform_dependent), ("bit_kernels", bit_kernels))
    for name, fn in checks:
        t0 = time.perf_counter()
        try:
            out[name] = fn()
        except Exception as e:
            out[name] = {"passed": False, "error": f"{type(e).__name__}: {e}"}
        out[name]["seconds"] = time.perf_counter() - t0
        log(f"[device_checks] {name}: {'passed' if out[name]['passed'] else 'FAILED'} ({out[name]['seconds']:.1f} s)",
            flush=True)
    out["passed"] = all(v["passed"] for v in out.values() if isinstance(v, dict))
    return out
