"""Issue 9: does the λ controller reach the sparsity asked for — and at what accuracy — on a small CNN?

Setup: ``SmallCNN`` (two 3×3 conv blocks and a linear head; ``--channels``, default 8,16 — 3 784 kernel
weights, biases unregularised; the default 16,32 is ~5× slower on CPU) on scikit-learn's 8×8 digits,
1 000 steps, trained with
``optax.chain(scale_by_adam_precond(), target_sparsity(R, s*, ramp_steps=0.6·steps))`` (α = 2e-3, batch 64).
For each regularizer R and target s* ∈ {50 %, 80 %, 95 %} it records

* the final sparsity of the kernels (exact zeros; zero groups for group ℓ1,2) — goal: |s − s*| ≤ 1 pt;
* the worst overshoot ``max s_t − s*`` over the steps after ``s*`` was first reached — goal: ≤ 2 pt;
* for the regularizers in ``--compare``: test accuracy against a *fixed-λ* run (``proximal_step(R, λ)``, same
  chain) whose λ was tuned on seed 0 by a bracketing secant search on ``log λ`` to land at ``s*`` (starting from
  the controller's final λ), then trained on every seed — goal: controller accuracy ≥ fixed-λ accuracy − 0.5 pt
  (mean over seeds).

Group ℓ1,2 (if installed) uses one group per conv filter and per input row of the dense head, and counts
the fraction of kernel weights in zero groups.

The JSON holds every number, the fixed-λ search points, and per-step curves (``lam``, ``sparsity``,
``target``; seed 0, every ``--log-every`` steps) for the notebook; the PNG plots λ_t and sparsity.

Usage:
  python benchmarks/target_sparsity.py [--quick] [--out DIR] [--seeds N] [--ctrl-seeds N] [--steps N]
                                       [--regs l0,lq05,...] [--compare lq05,...]
  (full default run: ~7 min on a shared 2-core CPU; --quick: ℓ½ only, 1 seed, 400 steps, ~35-60 s)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import proxgen_jax as pg
from proxgen_jax.train.data import load_digits_split
from proxgen_jax.train.models import SmallCNN
from proxgen_jax.transforms.target_sparsity import target_sparsity, target_sparsity_info


def _group_regularizer():
    """Group ℓ1,2 (filters of conv kernels, input rows of dense kernels), if ``GroupL12`` is installed."""
    try:
        from proxgen_jax.regularizers.group_l12 import GroupL12
    except ImportError:
        return None

    def choose(path, leaf):
        # Conv kernels (h, w, in, out): one group per output filter. The dense head (in, out): one group per
        # input feature (a row) — a column would be a whole class.
        if jnp.ndim(leaf) == 2:
            return GroupL12(group_axes=(1,))
        return GroupL12(group_axes=tuple(range(jnp.ndim(leaf) - 1)))

    return choose


REGULARIZERS = {
    "l0": pg.regularizers.L0,
    "lq05": lambda: pg.regularizers.Lq(0.5),
    "lq23": lambda: pg.regularizers.Lq(2.0 / 3.0),
    "l1": pg.regularizers.L1,
    "mcp": lambda: pg.regularizers.MCP(3.0),
    "scad": lambda: pg.regularizers.SCAD(3.7),
    "group": _group_regularizer,
}


class Problem:
    """Digits data, the CNN's graph, and per-seed initial params and minibatch orders."""

    def __init__(self, channels, steps, batch):
        x_tr, y_tr, x_te, y_te = load_digits_split(seed=0)
        self.x_tr, self.y_tr = jnp.asarray(x_tr), jnp.asarray(y_tr)
        self.x_te, self.y_te = jnp.asarray(x_te), jnp.asarray(y_te)
        self.channels, self.steps, self.batch = tuple(channels), steps, batch
        self.graphdef, _ = nnx.split(self.model(0), nnx.Param)
        self.n_train = x_tr.shape[0]

    def model(self, seed):
        return SmallCNN(10, rngs=nnx.Rngs(seed), channels=self.channels)

    def params(self, seed):
        return nnx.split(self.model(seed), nnx.Param)[1]

    def order(self, seed):
        rng = np.random.default_rng(1000 + seed)
        per_epoch = self.n_train // self.batch
        epochs = -(-self.steps // per_epoch)
        idx = np.concatenate([rng.permutation(self.n_train)[: per_epoch * self.batch].reshape(per_epoch, self.batch)
                              for _ in range(epochs)])
        return jnp.asarray(idx[: self.steps])

    def runner(self, make_tx):
        """A jitted ``(params, order, hyper) -> results``; ``hyper`` is a traced scalar given to ``make_tx``."""
        graphdef, x_tr, y_tr = self.graphdef, self.x_tr, self.y_tr

        def loss_fn(params, xb, yb):
            logits = nnx.merge(graphdef, params)(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        def run(params, order, hyper):
            tx = make_tx(hyper)
            opt_state = tx.init(params)

            def step(carry, i):
                params, opt_state = carry
                grads = jax.grad(loss_fn)(params, x_tr[i], y_tr[i])
                updates, opt_state = tx.update(grads, opt_state, params)
                params = optax.apply_updates(params, updates)
                sp = pg.sparsity(params, pg.kernels_only)["total"]
                try:
                    info = target_sparsity_info(opt_state)
                    lam, ctrl_sp, goal = jnp.mean(info["lam"]), jnp.mean(info["sparsity"]), info["target"]
                except ValueError:
                    lam, ctrl_sp, goal = jnp.asarray(hyper, jnp.float32), sp, jnp.zeros([])
                return (params, opt_state), (lam, ctrl_sp, goal, sp)

            (params, opt_state), curves = jax.lax.scan(step, (params, opt_state), order)
            logits = nnx.merge(graphdef, params)(self.x_te)
            acc = jnp.mean(jnp.argmax(logits, -1) == self.y_te)
            try:
                guard = target_sparsity_info(opt_state)["guard_steps"]
            except ValueError:
                guard = jnp.zeros([], jnp.int32)
            return acc, curves, guard

        return jax.jit(run)


def overshoot(curve, target):
    """``max s_t − s*`` over the steps after ``s*`` was first reached (``None`` if never reached)."""
    curve = np.asarray(curve)
    hit = np.flatnonzero(curve >= target)
    return float(curve[hit[0]:].max() - target) if hit.size else None


def controller_runs(prob, reg, targets, seeds, ramp_steps, lr, log_every):
    run = prob.runner(lambda tgt: optax.chain(
        pg.scale_by_adam_precond(),
        target_sparsity(reg, tgt, ramp_steps=ramp_steps, learning_rate=lr, mask=pg.kernels_only)))
    out = {}
    for tgt in targets:
        rows = []
        for seed in seeds:
            acc, (lam, ctrl_sp, goal, _), guard = run(prob.params(seed), prob.order(seed), jnp.float32(tgt))
            lam, ctrl_sp, goal = np.asarray(lam), np.asarray(ctrl_sp), np.asarray(goal)
            row = {"seed": seed, "acc": float(acc), "final_sparsity": float(ctrl_sp[-1]),
                   "overshoot": overshoot(ctrl_sp, tgt), "final_lam": float(lam[-1]),
                   "guard_steps": int(guard)}
            if seed == seeds[0]:
                row["curves"] = {"step": list(range(0, prob.steps, log_every)),
                                 "lam": lam[::log_every].tolist(), "sparsity": ctrl_sp[::log_every].tolist(),
                                 "target": goal[::log_every].tolist()}
            rows.append(row)
            print(f"  ctrl  s*={tgt:.2f} seed {seed}: sparsity {row['final_sparsity']:.4f} overshoot "
                  f"{row['overshoot'] if row['overshoot'] is None else round(row['overshoot'], 4)} acc "
                  f"{row['acc']:.4f} λ_T {row['final_lam']:.2e} guard {row['guard_steps']}", flush=True)
        out[str(tgt)] = rows
    return out


def fixed_lambda_runs(prob, reg, targets, seeds, lr, lam_guess, budget=5):
    """Tunes a constant λ on seed 0 to land at each target (bracket, then secant on log λ vs log density)."""
    run = prob.runner(lambda lam: optax.chain(
        pg.scale_by_adam_precond(), pg.proximal_step(reg, lam, lr, mask=pg.kernels_only)))

    def evaluate(lam, seed):
        acc, (_, _, _, sp), _ = run(prob.params(seed), prob.order(seed), jnp.float32(lam))
        return float(acc), float(np.asarray(sp)[-1])

    out = {}
    for tgt in targets:
        def f(s, tgt=tgt):  # log-density error, > 0: too dense
            return math.log(max(1.0 - s, 1e-3)) - math.log(1.0 - tgt)

        pts = []  # (log λ, sparsity, acc)
        x = math.log(lam_guess[str(tgt)])
        for _ in range(budget):
            acc, sp = evaluate(math.exp(x), seeds[0])
            pts.append((x, sp, acc))
            print(f"  fixed s*={tgt:.2f} λ={math.exp(x):.3e}: sparsity {sp:.4f} acc {acc:.4f}", flush=True)
            if abs(sp - tgt) <= 0.002:
                break
            below = [p for p in pts if f(p[1]) > 0]
            above = [p for p in pts if f(p[1]) <= 0]
            if below and above:  # bracketed: secant between the closest points on each side
                a = max(below, key=lambda p: p[0])
                b = min(above, key=lambda p: p[0])
                fa, fb = f(a[1]), f(b[1])
                x = a[0] + (b[0] - a[0]) * fa / (fa - fb) if fa != fb else 0.5 * (a[0] + b[0])
                x = min(max(x, a[0] + 0.05 * (b[0] - a[0])), b[0] - 0.05 * (b[0] - a[0]))
            else:
                x = x + (1.0 if below else -1.0)
        best = min(pts, key=lambda p: abs(p[1] - tgt))
        rows = [{"seed": seeds[0], "acc": best[2], "final_sparsity": best[1]}]
        for seed in seeds[1:]:
            acc, sp = evaluate(math.exp(best[0]), seed)
            rows.append({"seed": seed, "acc": acc, "final_sparsity": sp})
        out[str(tgt)] = {"lam": math.exp(best[0]), "runs": rows,
                         "search": [{"lam": math.exp(p[0]), "sparsity": p[1], "acc": p[2]} for p in pts]}
        print(f"  fixed s*={tgt:.2f}: λ*={math.exp(best[0]):.3e} mean sparsity "
              f"{np.mean([r['final_sparsity'] for r in rows]):.4f} mean acc {np.mean([r['acc'] for r in rows]):.4f}",
              flush=True)
    return out


def plot(results, targets, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(targets), figsize=(4.2 * len(targets), 6.2), sharex=True, squeeze=False)
    for j, tgt in enumerate(targets):
        for name, res in results.items():
            c = res["controller"][str(tgt)][0]["curves"]
            axes[0, j].plot(c["step"], np.asarray(c["sparsity"]) * 100, label=name, lw=1.2)
            axes[1, j].semilogy(c["step"], c["lam"], label=name, lw=1.2)
        c = next(iter(results.values()))["controller"][str(tgt)][0]["curves"]
        axes[0, j].plot(c["step"], np.asarray(c["target"]) * 100, "k--", lw=1, label="ramped target")
        axes[0, j].axhline(tgt * 100 + 2, color="r", lw=0.6, ls=":")
        axes[0, j].set_title(f"target {tgt:.0%}")
        axes[1, j].set_xlabel("step")
    axes[0, 0].set_ylabel("sparsity of the kernels (%)")
    axes[1, 0].set_ylabel("λ_t")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="ℓ½ only, one seed, 400 steps, no fixed-λ search (< 60 s)")
    ap.add_argument("--out", default=None, help="directory for target_sparsity.json / .png")
    ap.add_argument("--seeds", type=int, default=3, help="seeds for the regularizers in --compare")
    ap.add_argument("--ctrl-seeds", type=int, default=1, help="seeds for the other regularizers")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--regs", default="lq05,l0,lq23,l1,mcp,scad,group")
    ap.add_argument("--compare", default="lq05", help="regularizers also compared with a tuned fixed λ")
    ap.add_argument("--targets", default="0.5,0.8,0.95")
    ap.add_argument("--channels", default="8,16")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--log-every", type=int, default=5)
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.ctrl_seeds, args.steps, args.regs, args.compare = 1, 1, 400, "lq05", ""
    targets = [float(t) for t in args.targets.split(",")]
    seeds = list(range(args.seeds))
    ramp = int(0.6 * args.steps)
    prob = Problem([int(c) for c in args.channels.split(",")], args.steps, args.batch)
    n_kernel = sum(int(np.size(x)) for x, on in zip(jax.tree.leaves(prob.params(0)),
                                                    jax.tree.leaves(pg.kernels_only(prob.params(0)))) if on)
    print(f"SmallCNN channels={prob.channels}: {n_kernel} kernel weights; {args.steps} steps, ramp {ramp}, "
          f"seeds {seeds}", flush=True)

    results, t0 = {}, time.time()
    for name in args.regs.split(","):
        reg = REGULARIZERS[name]()
        if reg is None:
            print(f"{name}: not installed, skipped", flush=True)
            continue
        print(name, flush=True)
        t = time.time()
        compare = name in args.compare.split(",")
        res = {"controller": controller_runs(prob, reg, targets, seeds if compare else seeds[:args.ctrl_seeds],
                                             ramp, args.lr, args.log_every)}
        if compare:
            guess = {k: float(np.exp(np.mean([np.log(r["final_lam"]) for r in rows])))
                     for k, rows in res["controller"].items()}
            res["fixed"] = fixed_lambda_runs(prob, reg, targets, seeds, args.lr, guess)
        res["seconds"] = time.time() - t
        results[name] = res

    summary = {}
    for name, res in results.items():
        for tgt in targets:
            rows = res["controller"][str(tgt)]
            fin = [r["final_sparsity"] for r in rows]
            over = [r["overshoot"] for r in rows]
            row = {"final_sparsity_mean": float(np.mean(fin)),
                   "max_abs_final_error_pt": float(100 * np.max(np.abs(np.asarray(fin) - tgt))),
                   "max_overshoot_pt": None if any(o is None for o in over) else float(100 * max(over)),
                   "acc_mean": float(np.mean([r["acc"] for r in rows]))}
            row["reached_within_1pt"] = row["max_abs_final_error_pt"] <= 1.0
            row["overshoot_le_2pt"] = row["max_overshoot_pt"] is not None and row["max_overshoot_pt"] <= 2.0
            if "fixed" in res:
                fx = res["fixed"][str(tgt)]
                row["fixed_lam"] = fx["lam"]
                row["fixed_sparsity_mean"] = float(np.mean([r["final_sparsity"] for r in fx["runs"]]))
                row["fixed_acc_mean"] = float(np.mean([r["acc"] for r in fx["runs"]]))
                row["acc_gap_pt"] = 100 * (row["acc_mean"] - row["fixed_acc_mean"])
            summary[f"{name}@{tgt}"] = row
    print("\nsummary (pt = percentage points)")
    for k, row in summary.items():
        line = (f"{k:12s} final {100 * row['final_sparsity_mean']:6.2f}%  "
                f"|err|max {row['max_abs_final_error_pt']:.2f}  "
                f"overshoot max {row['max_overshoot_pt']}  acc {100 * row['acc_mean']:.2f}")
        if "fixed_acc_mean" in row:
            line += (f"  | fixed λ={row['fixed_lam']:.2e}: sparsity {100 * row['fixed_sparsity_mean']:.2f}% "
                     f"acc {100 * row['fixed_acc_mean']:.2f}  gap {row['acc_gap_pt']:+.2f}")
        print(line)
    print(f"total {time.time() - t0:.1f}s")

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        meta = {"args": vars(args), "ramp_steps": ramp, "n_kernel_weights": n_kernel, "jax": jax.__version__,
                "platform": platform.platform(), "device": str(jax.devices()[0]),
                "seconds": time.time() - t0}
        with open(os.path.join(args.out, "target_sparsity.json"), "w") as fh:
            json.dump({"meta": meta, "summary": summary, "results": results}, fh, indent=1)
        plot(results, targets, os.path.join(args.out, "target_sparsity.png"))
        print("wrote", os.path.join(args.out, "target_sparsity.json"))


if __name__ == "__main__":
    main()
