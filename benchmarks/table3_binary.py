"""Table 3 of the ProxGen paper at CPU scale: binary small ResNet on sklearn digits.

Full precision (Adam) vs BinaryConnect vs ProxQuant (Euclidean prox) vs revised ProxQuant (ProxGen: prox in the
metric ``C_t+δI``) with ``dist(θ, ±1)^q`` for q = 1, ⅔, ½. All kernels but the first conv and the classifier
are binarised (BatchNorm parameters stay full precision, as in the paper). λ ramps linearly from 0 over
training; at test time the weights are hard-quantised to ±1 (``proxgen_jax.quantize``).

λ is selected per method on a validation split (20 % of the training set, seed 0) from a small grid — the
Euclidean and the preconditioned prox need very different λ for the same pull (the preconditioned step
``α_t/(C_t+δ)`` is much larger than ``α_t``). The selected λ is then run with every seed on the full
training set and the test error reported as mean ± std.

Usage::

    python benchmarks/table3_binary.py --out benchmarks/results/table3 [--quick]

Writes ``OUT/table3.json``, ``OUT/table3_table.md`` and ``OUT/table3_curves.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from proxgen_jax.train.data import load_digits_split
from proxgen_jax.train.loop import RunConfig, train_run
from proxgen_jax.train.plots import plot_curves

#: (column name, optimizer, q, λ grid)
METHODS_FULL = [
    ("Full precision (Adam)", "adam", 1.0, [0.0]),
    ("BinaryConnect", "binary_connect", 1.0, [0.0]),
    ("ProxQuant", "proxquant", 1.0, [3.0, 10.0, 30.0]),
    ("Revised ProxQuant ℓ1", "revised_proxquant", 1.0, [0.03, 0.1, 0.3]),
    ("Revised ProxQuant ℓ⅔", "revised_proxquant", 2.0 / 3.0, [0.03, 0.1, 0.3]),
    ("Revised ProxQuant ℓ½", "revised_proxquant", 0.5, [0.03, 0.1, 0.3]),
]
METHODS_QUICK = [("Full precision (Adam)", "adam", 1.0, [0.0]), ("BinaryConnect", "binary_connect", 1.0, [0.0]),
                 ("Revised ProxQuant ℓ1", "revised_proxquant", 1.0, [0.1])]


def _val_split(split, seed=0, frac=0.2):
    x_tr, y_tr, _, _ = split
    rng = np.random.default_rng(seed + 100)
    idx = rng.permutation(x_tr.shape[0])
    n_val = int(frac * x_tr.shape[0])
    return x_tr[idx[n_val:]], y_tr[idx[n_val:]], x_tr[idx[:n_val]], y_tr[idx[:n_val]]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/table3")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", type=int, default=None)
    args = p.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 10)
    seeds = args.seeds or (1 if args.quick else 3)
    methods = METHODS_QUICK if args.quick else METHODS_FULL
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()

    def cfg(opt, q, lam, seed):
        return RunConfig(task="binary", model="resnet", dataset="digits", regularizer="binary", q=q, lam=lam,
                         optimizer=opt, epochs=epochs, lr=3e-3, seed=seed)

    selection, chosen = [], {}
    val = _val_split(load_digits_split(seed=0))
    for col, opt, q, grid in methods:
        if len(grid) == 1:
            chosen[col] = grid[0]
            continue
        scores = []
        for lam in grid:
            h = train_run(cfg(opt, q, lam, 0), val, progress=False)
            scores.append(h["final"]["test_error"])
            selection.append({"method": col, "lam": lam, "val_error": h["final"]["test_error"],
                              "quantized_fraction": h["final"]["quantized_fraction"]})
            print(f"select {col} λ={lam:g}: val error {scores[-1]:.3f}", flush=True)
        chosen[col] = grid[int(np.argmin(scores))]

    runs = []
    for seed in range(seeds):
        split = load_digits_split(seed=seed)
        for col, opt, q, _ in methods:
            h = train_run(cfg(opt, q, chosen[col], seed), split, progress=False)
            h["label"] = col
            runs.append(h)
            print(f"seed {seed} {col}: test error {h['final']['test_error']:.3f}", flush=True)

    rows = []
    for col, opt, q, _ in methods:
        errs = np.asarray([r["final"]["test_error"] for r in runs if r["label"] == col]) * 100
        qf = np.mean([r["final"]["quantized_fraction"] for r in runs if r["label"] == col])
        rows.append({"method": col, "optimizer": opt, "q": q, "lam": chosen[col], "test_error_mean": float(errs.mean()),
                     "test_error_std": float(errs.std()), "seeds": int(errs.size), "quantized_before_rounding": float(qf)})
    lines = ["| method | λ (selected) | test error % | weights on ±1 before rounding |", "|---|---|---|---|"]
    for r in rows:
        lam = "—" if r["optimizer"] in ("adam", "binary_connect") else f"{r['lam']:g}"
        qb = "—" if r["optimizer"] == "adam" else f"{100 * r['quantized_before_rounding']:.0f} %"
        lines.append(f"| {r['method']} | {lam} | {r['test_error_mean']:.2f} ± {r['test_error_std']:.2f} | {qb} |")
    table = "\n".join(lines)
    with open(os.path.join(args.out, "table3.json"), "w") as f:
        json.dump({"epochs": epochs, "seeds": seeds, "selection": selection, "rows": rows, "runs": runs,
                   "wall_time_s": time.perf_counter() - t0}, f)
    with open(os.path.join(args.out, "table3_table.md"), "w") as f:
        f.write(table + "\n")
    plot_curves(runs, os.path.join(args.out, "table3_curves.png"),
                title=f"binary small ResNet on digits ({epochs} epochs; accuracy after quantisation)")
    print(f"\nTable 3 at CPU scale — binary small ResNet on digits, {epochs} epochs, {seeds} seed(s)\n")
    print(table)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
