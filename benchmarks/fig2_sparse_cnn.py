"""Fig. 2 of the ProxGen paper at CPU scale: sparse small CNN on sklearn digits.

ProxGen (proximal Adam) vs Adam on the subgradient for ℓ1, ℓ½, ℓ⅔ (and Prox-SGD for ℓ1), and ProxGen ℓ0 vs
ℓ0-hc (Louizos et al., 2018); plain Adam as the dense reference. Same λ per regularizer for every method, so
the objectives ``F = f + λR`` are comparable. Constant step size (no decay), Adam's defaults, batch 64.

Usage::

    python benchmarks/fig2_sparse_cnn.py --out benchmarks/results/fig2 [--quick]

Writes ``OUT/fig2.json`` (all runs + summary), ``OUT/fig2_table.md`` and ``OUT/fig2_objective.png``,
``OUT/fig2_curves.png`` (test accuracy / sparsity), ``OUT/fig2_tradeoff.png``, ``OUT/fig2_diagnostics.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from proxgen_jax.train.cli import format_table, summarize_runs
from proxgen_jax.train.data import load_digits_split
from proxgen_jax.train.loop import RunConfig, train_run
from proxgen_jax.train.plots import _plt, group_runs, plot_all

#: (regularizer, λ, methods) — the panels of the figure.
PANELS_FULL = [
    ("l1", 1e-3, ["proxgen_adam", "subgradient_adam", "prox_sgd"]),
    ("ltwothirds", 1e-3, ["proxgen_adam", "subgradient_adam"]),
    ("lhalf", 1e-3, ["proxgen_adam", "subgradient_adam"]),
    ("l0", 1e-3, ["proxgen_adam", "l0_hc"]),
]
PANELS_QUICK = [("lhalf", 1e-3, ["proxgen_adam", "subgradient_adam"])]


def plot_objectives(runs, path):
    plt = _plt()
    regs = [r for r in dict.fromkeys(run["config"]["regularizer"] for run in runs
                                     if run["config"]["optimizer"] != "adam")]
    fig, axes = plt.subplots(1, len(regs), figsize=(3.6 * len(regs), 3.2), squeeze=False)
    for ax, reg in zip(axes[0], regs):
        sub = [r for r in runs if r["config"]["regularizer"] == reg and r["config"]["optimizer"] != "adam"]
        for name, rs in group_runs(sub).items():
            ys = np.asarray([r["objective"] for r in rs])
            m, s = ys.mean(0), ys.std(0)
            line, = ax.plot(rs[0]["epoch"], m, label=name.split("[")[0])
            ax.fill_between(rs[0]["epoch"], m - s, m + s, alpha=0.2, color=line.get_color())
        ax.set_title(f"{reg}, λ={sub[0]['config']['lam']:g}")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("F(θ) = f + λR (train)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/fig2")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", type=int, default=None)
    args = p.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 20)
    seeds = args.seeds or (1 if args.quick else 3)
    panels = PANELS_QUICK if args.quick else PANELS_FULL
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    runs = []
    for seed in range(seeds):
        split = load_digits_split(seed=seed)
        common = dict(task="sparse", model="cnn", dataset="digits", epochs=epochs, lr=3e-3, seed=seed)
        runs.append(train_run(RunConfig(optimizer="adam", regularizer="l1", lam=0.0, **common), split, progress=False))
        for reg, lam, methods in panels:
            for opt in methods:
                runs.append(train_run(RunConfig(optimizer=opt, regularizer=reg, lam=lam, **common), split,
                                      progress=False))
                print(f"seed {seed} {runs[-1]['label']}: acc {runs[-1]['final']['test_acc']:.3f} "
                      f"sparsity {runs[-1]['final']['sparsity']:.3f} F {runs[-1]['final']['objective']:.3f}",
                      flush=True)
    table = format_table(runs)
    summary = summarize_runs(runs)
    with open(os.path.join(args.out, "fig2.json"), "w") as f:
        json.dump({"epochs": epochs, "seeds": seeds, "panels": panels, "summary": summary, "runs": runs,
                   "wall_time_s": time.perf_counter() - t0}, f)
    with open(os.path.join(args.out, "fig2_table.md"), "w") as f:
        f.write(table + "\n")
    plot_objectives(runs, os.path.join(args.out, "fig2_objective.png"))
    plot_all(runs, args.out, prefix="fig2_", title=f"small CNN on digits, {epochs} epochs, {seeds} seed(s)")
    print(f"\nFig. 2 at CPU scale — small CNN on digits, {epochs} epochs, {seeds} seed(s)\n")
    print(table)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
