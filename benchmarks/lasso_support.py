"""Study 1 of ProxGen (Sec. 5, Fig. 3): Lasso support recovery, ProxGen vs Prox-SGD, random vs zero init.

Synthetic sparse regression ``y = Xθ* + σε`` with ``k`` nonzeros among ``d``; objective
``F(θ) = (1/2n)‖y − Xθ‖² + λ‖θ‖₁``, full-batch gradients by default (``--batch-size`` for minibatches).
Four runs: ProxGen (Adam preconditioner + exact ℓ1 prox, ``proxgen_adam(α, L1(), λ)``) and Prox-SGD
(``prox_sgd(λ)``, Yang et al.'s published rule and defaults), each from a random and from the zero
initialisation. Per iteration we record the support F1 of the exact-nonzero pattern against ``supp θ*``, the
number of exact zeros and ``F``; the reference Lasso solution comes from scikit-learn's coordinate descent.

Usage::

    python benchmarks/lasso_support.py --quick --out results/lasso
    python benchmarks/lasso_support.py --out results/lasso       # the full run

Writes ``lasso_support.json`` and ``lasso_support.png`` (support F1 and exact zeros over iterations for the
four runs) to ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import proxgen_jax as pg
from proxgen_jax.baselines.prox_sgd import prox_sgd
from proxgen_jax.regularizers import L1


def make_problem(n: int, d: int, k: int, noise: float, seed: int):
    """``(X, y, θ*)``: Gaussian design, ``k`` nonzeros of magnitude U(1, 2) with random signs."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    theta = np.zeros(d)
    support = rng.choice(d, k, replace=False)
    theta[support] = rng.choice([-1.0, 1.0], k) * rng.uniform(1.0, 2.0, k)
    y = X @ theta + noise * rng.standard_normal(n)
    return X.astype(np.float32), y.astype(np.float32), theta


def support_f1(nonzero: jax.Array, true_support: jax.Array) -> jax.Array:
    """F1 of the predicted support (exact nonzeros) against the true one; 0 when nothing is predicted."""
    tp = jnp.sum(nonzero & true_support)
    fp = jnp.sum(nonzero & ~true_support)
    fn = jnp.sum(~nonzero & true_support)
    return jnp.where(tp > 0, 2 * tp / jnp.maximum(2 * tp + fp + fn, 1), 0.0)


def train(tx: optax.GradientTransformation, theta0, X, y, lam: float, true_support, steps: int,
          batch_size: int | None = None, seed: int = 0):
    """Runs ``steps`` updates under one ``lax.scan``; returns the final θ and per-step metrics."""
    X, y = jnp.asarray(X), jnp.asarray(y)
    n = X.shape[0]
    sup = jnp.asarray(true_support)

    def loss(w, xb, yb):
        r = yb - xb @ w
        return 0.5 * jnp.mean(r * r)

    def objective(w):
        return loss(w, X, y) + lam * jnp.sum(jnp.abs(w))

    def step(carry, key):
        w, state = carry
        if batch_size is None:
            g = jax.grad(loss)(w, X, y)
        else:
            idx = jax.random.choice(key, n, (batch_size,), replace=False)
            g = jax.grad(loss)(w, X[idx], y[idx])
        upd, state = tx.update(g, state, w)
        w = optax.apply_updates(w, upd)
        nz = w != 0
        return (w, state), (support_f1(nz, sup), jnp.sum(~nz), objective(w))

    @jax.jit
    def run(w0):
        keys = jax.random.split(jax.random.key(seed), steps)
        (w, _), hist = jax.lax.scan(step, (w0, tx.init(w0)), keys)
        return w, hist

    w, (f1, zeros, obj) = run(jnp.asarray(theta0, jnp.float32))
    return np.asarray(w), {"f1": np.asarray(f1), "zeros": np.asarray(zeros), "objective": np.asarray(obj)}


def _prox_sgd_lr_in_gradient_only(lam: float, eps0=0.06, rho0=0.9, beta=0.999, delta=1e-8):
    """DIAGNOSTIC ONLY, not Prox-SGD as published: ``θ̂ = soft(θ − ε_t v/τ, λ/τ)`` — the step size in the
    gradient step but not in the threshold — then ``θ + ε_t(θ̂ − θ)``. A guess at how Fig. 3(b) of the
    ProxGen paper (Prox-SGD stuck at exact zeros) could arise; see the report in the README/benchmarks."""

    def init(w):
        return (jnp.zeros([], jnp.int32), jnp.zeros_like(w), jnp.zeros_like(w))

    def update(g, state, w):
        t, v, r = state
        tf = t.astype(jnp.float32)
        rho, eps = rho0 / jnp.sqrt(tf + 4), eps0 / jnp.sqrt(tf + 4)
        v = (1 - rho) * v + rho * g
        r = beta * r + (1 - beta) * g * g
        tau = jnp.sqrt(r / (1 - beta ** (tf + 1))) + delta
        z = w - eps * v / tau
        hat = jnp.sign(z) * jnp.maximum(jnp.abs(z) - lam / tau, 0)
        return eps * (hat - w), (t + 1, v, r)

    return optax.GradientTransformation(init, update)


def run_study(n=300, d=80, k=8, noise=0.1, lam=0.05, steps=3000, lr=1e-2, init_scale=0.5, seed=0,
              batch_size=None, prox_sgd_kwargs=None, diagnose_variant=False) -> dict:
    """The four runs of Fig. 3; returns a JSON-ready dict (histories as lists)."""
    X, y, theta_star = make_problem(n, d, k, noise, seed)
    true_support = theta_star != 0
    rng = np.random.default_rng(seed + 1)
    inits = {"random": init_scale * rng.standard_normal(d), "zero": np.zeros(d)}
    methods = {
        "ProxGen (Adam + l1 prox)": pg.proxgen_adam(lr, L1(), lam),
        "Prox-SGD": prox_sgd(lam, **(prox_sgd_kwargs or {})),
    }
    try:   # reference Lasso solution (coordinate descent) for the same objective
        from sklearn.linear_model import Lasso
        ref = Lasso(alpha=lam, fit_intercept=False, tol=1e-12, max_iter=100_000).fit(
            X.astype(np.float64), y.astype(np.float64)).coef_
    except ImportError:  # pragma: no cover
        ref = None
    if diagnose_variant:
        methods["Prox-SGD variant (not published)"] = _prox_sgd_lr_in_gradient_only(lam)
    # log-spaced iterations kept in the JSON / plot (every step up to 100)
    keep = np.unique(np.concatenate([np.arange(min(steps, 100)),
                                     np.round(np.logspace(0, np.log10(steps), 400)).astype(int) - 1]))
    runs = []
    for mname, tx in methods.items():
        for iname, theta0 in inits.items():
            t0 = time.perf_counter()
            w, hist = train(tx, theta0, X, y, lam, true_support, steps, batch_size, seed)
            secs = time.perf_counter() - t0
            nz = w != 0
            runs.append({
                "method": mname, "init": iname, "seconds": secs,
                "final_f1": float(hist["f1"][-1]), "final_zeros": int(hist["zeros"][-1]),
                "true_zeros": int(d - k),
                "false_positives": int(np.sum(nz & ~true_support)),
                "false_negatives": int(np.sum(~nz & true_support)),
                "min_abs_off_support": float(np.min(np.abs(w[~true_support]))),
                "final_objective": float(hist["objective"][-1]),
                "max_abs_diff_to_lasso": None if ref is None else float(np.max(np.abs(w - ref))),
                "theta": w.tolist(),
                "history": {"iteration": (keep + 1).tolist(),
                            **{key: val[keep].tolist() for key, val in hist.items()}},
            })
    ref_obj = None if ref is None else float(0.5 * np.mean((y - X @ ref) ** 2) + lam * np.sum(np.abs(ref)))
    return {
        "config": {"n": n, "d": d, "k": k, "noise": noise, "lam": lam, "steps": steps, "lr": lr,
                   "init_scale": init_scale, "seed": seed, "batch_size": batch_size,
                   "prox_sgd": prox_sgd_kwargs or {}, "diagnose_variant": diagnose_variant},
        "theta_star": theta_star.tolist(),
        "lasso_reference": None if ref is None else {"theta": ref.tolist(), "objective": ref_obj,
                                                     "support_size": int(np.sum(ref != 0))},
        "runs": runs,
    }


def table(result: dict) -> str:
    head = (f"{'method':33s} {'init':7s} {'F1':>5s} {'zeros':>9s} {'FP':>4s} {'FN':>4s} "
            f"{'min|θ_off|':>10s} {'F(θ)':>9s} {'|θ−lasso|∞':>10s} {'sec':>6s}")
    lines = [head, "-" * len(head)]
    for r in result["runs"]:
        diff = "-" if r["max_abs_diff_to_lasso"] is None else f"{r['max_abs_diff_to_lasso']:.1e}"
        lines.append(f"{r['method']:33s} {r['init']:7s} {r['final_f1']:5.2f} "
                     f"{r['final_zeros']:4d}/{r['true_zeros']:<4d} {r['false_positives']:4d} "
                     f"{r['false_negatives']:4d} {r['min_abs_off_support']:10.1e} {r['final_objective']:9.5f} "
                     f"{diff:>10s} {r['seconds']:6.2f}")
    ref = result.get("lasso_reference")
    if ref is not None:
        lines.append(f"Lasso reference (sklearn CD): F = {ref['objective']:.5f}, support size {ref['support_size']}")
    return "\n".join(lines)


_STYLES = {
    "ProxGen (Adam + l1 prox)": {"color": "C0", "lw": 2},
    "Prox-SGD": {"color": "C1", "ls": "--", "lw": 2},
    "Prox-SGD variant (not published)": {"color": "C2", "ls": ":", "lw": 1.5},
}


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    for col, init in enumerate(("random", "zero")):
        for r in result["runs"]:
            if r["init"] != init:
                continue
            it = r["history"]["iteration"]
            style = _STYLES.get(r["method"], {})
            axes[0, col].plot(it, r["history"]["f1"], label=r["method"], **style)
            axes[1, col].plot(it, r["history"]["zeros"], label=r["method"], **style)
        axes[1, col].axhline(result["runs"][0]["true_zeros"], color="k", ls=":", lw=1, label="true # zeros")
        axes[0, col].set_title(f"{init} initialisation")
        axes[0, col].set_ylabel("support F1 (exact nonzeros)")
        axes[1, col].set_ylabel("# exact zeros")
        axes[1, col].set_xlabel("iteration")
        for ax in axes[:, col]:
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
    axes[1, 1].legend(loc="best", fontsize=8)
    cfg = result["config"]
    fig.suptitle(f"Lasso support recovery: n={cfg['n']}, d={cfg['d']}, k={cfg['k']}, λ={cfg['lam']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small problem, few steps (seconds)")
    ap.add_argument("--out", default=None, help="directory for lasso_support.json / .png")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--d", type=int, default=100)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--lam", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--lr", type=float, default=1e-2, help="ProxGen's α")
    ap.add_argument("--batch-size", type=int, default=None, help="minibatch size (default: full batch)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--diagnose-variant", action="store_true",
                    help="also run a NON-published Prox-SGD variant (step size in the gradient step only)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.d, args.k, args.steps = 200, 50, 5, 1500
    result = run_study(n=args.n, d=args.d, k=args.k, noise=args.noise, lam=args.lam, steps=args.steps,
                       lr=args.lr, seed=args.seed, batch_size=args.batch_size,
                       diagnose_variant=args.diagnose_variant)
    print(table(result))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "lasso_support.json"), "w") as fh:
            json.dump(result, fh)
        plot(result, os.path.join(args.out, "lasso_support.png"))
        print(f"wrote {args.out}/lasso_support.json and {args.out}/lasso_support.png")
    return result


if __name__ == "__main__":
    main()
