"""Quantised training without BatchNorm: the digits MLP at 1, 2 and 4 bits per weight with learned per-channel scales.

Every kernel (both layers, the classifier included) is quantised to ``s_c·L`` with one scale per output channel,
``L`` = ``±1`` (1 bit) or PARQ's uniform grid (``pg.uniform_levels(b)``); biases stay full precision. The reported
accuracy is on the test set **after hard quantisation** (every kernel entry snapped to its channel's grid).

Rows (α = 3e-3, Adam's β, batch 64, the same epochs and seeds for all):

* **ProxGen (metric fit)** — ``revised_proxquant(..., scale="channel")``: the scale ``s_c = argmin Σ c (z − sℓ)²``
  and the prox of ``λ·dist(θ, s_c L)`` both in Adam's metric ``c = C_t+δ`` (``λ`` ramped linearly from 0);
* **Euclidean fit (PARQ's rule)** — ``optax.chain(optax.scale_by_adam(), prox_quantize(..., scale="channel"))``:
  ordinary least-squares fit and Euclidean prox after a plain Adam step (the rule of torchao's PARQ / ProxQuant);
* **Straight-through (BinaryConnect-style)** — Adam on latent weights, forward pass with ``s_c·ℓ(w/s_c)`` (least-
  squares scale refit every step), gradient passed straight through inside the grid's range;
* **Adam + post-training fit** — full-precision Adam, then the least-squares scale fit and rounding (reference),
  and Adam's full-precision accuracy.

``λ`` for the two prox rows is chosen per bit width on validation splits (20 % of the training set of seeds 0 and
1) from a 3-point grid a decade apart (it spans "few weights on the grid" to "all on the grid early"), by the mean
validation accuracy after quantisation over the two splits; the chosen ``λ`` is then run with every seed on the
full training set (mean ± std over seeds).

Usage::

    python benchmarks/quantization.py --out benchmarks/results/quantization [--quick]

Writes ``OUT/quantization.json``, ``OUT/quantization_table.md`` and ``OUT/quantization.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import numpy as np

from proxgen_jax.train.data import load_digits_split
from proxgen_jax.train.loop import RunConfig, train_run

LR = 3e-3
VAL_SPLITS = 2
#: (row, CLI optimizer, λ grid) — λ is the final value of the linear ramp.
METHODS = [
    ("ProxGen (metric fit)", "revised_proxquant", [1e-3, 1e-2, 1e-1]),
    ("Euclidean fit (PARQ's rule)", "proxquant", [0.03, 0.3, 3.0]),
    ("Straight-through (BinaryConnect-style)", "binary_connect", [0.0]),
    ("Adam + post-training fit", "adam", [0.0]),
]


def _val_split(split, seed=0, frac=0.2):
    x_tr, y_tr, _, _ = split
    idx = np.random.default_rng(seed + 100).permutation(x_tr.shape[0])
    n_val = int(frac * x_tr.shape[0])
    return x_tr[idx[n_val:]], y_tr[idx[n_val:]], x_tr[idx[:n_val]], y_tr[idx[:n_val]]


def _run(opt, bits, lam, seed, data, epochs, scale="channel"):
    cfg = RunConfig(task="binary", model="mlp", dataset="digits", regularizer="binary", q=1.0, lam=lam,
                    optimizer=opt, epochs=epochs, lr=LR, seed=seed, diagnostics=False, bits=bits, scale=scale)
    h = train_run(cfg, data, progress=False)
    return {"optimizer": opt, "bits": bits, "lam": lam, "seed": seed, "test_acc": h["test_acc"],
            "final_acc": h["final"]["test_acc"], "time_s": h["final"]["time_s"]}


def _plot(rows, fp, path, title):
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4))
    names = list(dict.fromkeys(r["method"] for r in rows))
    for k, name in enumerate(names):
        rs = sorted((r for r in rows if r["method"] == name), key=lambda r: r["bits"])
        xs = np.array([r["bits"] for r in rs]) + 0.06 * (k - 1.5)
        ax.errorbar(xs, [r["acc_mean"] for r in rs], yerr=[r["acc_std"] for r in rs], marker="o", capsize=3,
                    label=name)
    if fp is not None:
        ax.axhline(fp, color="k", lw=0.8, ls=":", label="Adam, full precision")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["bits"] for r in rows}), [str(b) for b in sorted({r["bits"] for r in rows})])
    ax.set_xlabel("bits per weight (learned per-channel scales)")
    ax.set_ylabel("test accuracy % after hard quantisation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _table(rows, fp, epochs, seeds):
    bits = sorted({r["bits"] for r in rows})
    lines = ["| method | " + " | ".join(f"{b} bit{'s' if b > 1 else ''} (λ)" for b in bits) + " |",
             "|---|" + "---|" * len(bits)]
    for name in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for b in bits:
            r = next(r for r in rows if r["method"] == name and r["bits"] == b)
            lam = f" ({r['lam']:g})" if r["lam"] else ""
            cells.append(f"{r['acc_mean']:.1f} ± {r['acc_std']:.1f}{lam}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if fp is not None:
        lines.append("| Adam, full precision (no quantisation) | " + " | ".join([f"{fp:.1f}"] + [""] * (len(bits) - 1))
                     + " |")
    lines += ["", (f"Test accuracy % after hard quantisation (mean ± std over {seeds} seeds), digits MLP, {epochs} "
                   "epochs, every kernel quantised with learned per-channel scales.")]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/quantization")
    p.add_argument("--quick", action="store_true", help="2 bits, 1 seed, 2 epochs, no λ selection")
    p.add_argument("--epochs", type=int, default=None, help="default 30 (--quick 2)")
    p.add_argument("--seeds", type=int, default=None, help="default 3 (--quick 1)")
    p.add_argument("--bits", type=int, nargs="+", default=None, help="default 1 2 4 (--quick 2)")
    args = p.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 30)
    seeds = args.seeds or (1 if args.quick else 3)
    bit_widths = args.bits or ([2] if args.quick else [1, 2, 4])
    os.makedirs(args.out, exist_ok=True)
    # Seeds share compiled steps (same HLO, other values): a per-process compilation cache.
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="quantization_jit_"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    t0 = time.perf_counter()
    vals = [_val_split(load_digits_split(seed=k), seed=k) for k in range(VAL_SPLITS)]
    selection, runs, rows = [], [], []
    for bits in bit_widths:
        for name, opt, grid in METHODS:
            lam = grid[len(grid) // 2]
            if len(grid) > 1 and not args.quick:
                scores = [(float(np.mean([_run(opt, bits, g, k, val, epochs)["final_acc"]
                                          for k, val in enumerate(vals)])), g) for g in grid]
                lam = max(scores)[1]
                selection.append({"method": name, "bits": bits, "val_acc": {f"{g:g}": a for a, g in scores},
                                  "lam": lam})
                print(f"[select] {bits} bits {name}: " + ", ".join(f"λ={g:g} {100 * a:.1f} %" for a, g in scores),
                      flush=True)
            rs = [_run(opt, bits, lam, seed, load_digits_split(seed=seed), epochs) for seed in range(seeds)]
            runs += [dict(r, method=name) for r in rs]
            acc = 100 * np.array([r["final_acc"] for r in rs])
            rows.append({"method": name, "optimizer": opt, "bits": bits, "lam": lam, "acc_mean": float(acc.mean()),
                         "acc_std": float(acc.std()), "accs": acc.tolist()})
            print(f"[run] {bits} bits {name} λ={lam:g}: {acc.mean():.1f} ± {acc.std():.1f} %", flush=True)
    fp_runs = [_run("adam", None, 0.0, seed, load_digits_split(seed=seed), epochs, scale=None)
               for seed in range(seeds)]
    fp = float(100 * np.mean([r["final_acc"] for r in fp_runs]))
    table = _table(rows, fp, epochs, seeds)
    result = {"epochs": epochs, "seeds": seeds, "bits": bit_widths, "lr": LR, "rows": rows, "selection": selection,
              "full_precision_acc": fp, "runs": runs, "table": table, "wall_time_s": time.perf_counter() - t0}
    with open(os.path.join(args.out, "quantization.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "quantization_table.md"), "w") as f:
        f.write(table + "\n")
    _plot(rows, fp, os.path.join(args.out, "quantization.png"),
          f"digits MLP, learned per-channel scales, {epochs} epochs, {seeds} seed(s)")
    print(table)
    print(f"wrote {args.out} in {result['wall_time_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
