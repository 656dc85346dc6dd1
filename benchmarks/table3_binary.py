"""Table 3 of the ProxGen paper at CPU scale: binary small ResNet on sklearn digits, ProxQuant's protocol.

Rows: full precision (Adam), BinaryConnect, Adam with the weights hard-binarised at the freeze epoch (λ = 0: no
prox at all — what rounding plus the fine-tune phase achieve alone), ProxQuant (Euclidean prox of the W-shaped
``λ·dist(θ, ±1)``), revised ProxQuant (ProxGen: the prox in Adam's metric ``C_t+δI``) with ``dist(θ, ±1)^q`` for
q = 1, ⅔, ½, and — when ``pg.prox_quantize`` takes ``scale=`` — revised ProxQuant ℓ1 with learned per-channel
scales ``s_c·{±1}``. All kernels but the stem and the classifier are binarised; BatchNorm stays full precision.

Protocol (Bai et al., 2019, at CPU scale), identical for every quantised row:

1. ``λ_t = λ_rate · t`` grows linearly from 0 over the first ``freeze_epoch`` epochs (prox rows);
2. at ``freeze_epoch`` the binarised kernels are hard-quantised to ±1 (sign) and frozen;
3. the BatchNorm statistics are re-estimated for the frozen binary weights, and the remaining epochs fine-tune
   the other parameters (BatchNorm scales/offsets, stem, classifier, biases) with Adam
   (``proxgen_jax.train.batchnorm``).

``λ_rate`` is chosen per row on a validation split (20 % of the seed-0 training set) from a 3-point grid, by
the validation error at the end of the protocol; the chosen rate is then run with 3 seeds on the full
training set (test error mean ± std). α = 3e-3 for every row and phase. Also recorded: the fraction of binarised
weights already exactly on ±1 before rounding, per epoch and at the freeze point, and the test accuracy at the
freeze point of the unrounded network, of the rounded one with the training-time BatchNorm statistics and after
re-estimating them.

Usage::

    python benchmarks/table3_binary.py --out benchmarks/results/table3 [--quick]

Writes ``OUT/table3.json``, ``OUT/table3_table.md`` and ``OUT/table3_curves.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import proxgen_jax as pg
from proxgen_jax.train.data import load_digits_split
from proxgen_jax.train.loop import RunConfig, train_run
from proxgen_jax.train.optimizers import BINARY_LEVELS, binary_mask, build_optimizer

LR = 3e-3
#: (row, optimizer, q, λ_rate grid per epoch). ``*_channel``: revised ProxQuant with learned per-channel scales.
METHODS_FULL = [
    ("Full precision (Adam)", "adam", 1.0, [0.0]),
    ("BinaryConnect", "binary_connect", 1.0, [0.0]),
    ("Adam, sign at freeze (λ = 0)", "proxquant", 1.0, [0.0]),
    ("ProxQuant", "proxquant", 1.0, [0.04, 0.12, 0.4]),
    ("Revised ProxQuant ℓ1", "revised_proxquant", 1.0, [2e-4, 6e-4, 2e-3]),
    ("Revised ProxQuant ℓ⅔", "revised_proxquant", 2.0 / 3.0, [2e-4, 6e-4, 2e-3]),
    ("Revised ProxQuant ℓ½", "revised_proxquant", 0.5, [2e-4, 6e-4, 2e-3]),
    ("Revised ProxQuant ℓ1, per-channel scale", "revised_proxquant_channel", 1.0, [2e-4, 6e-4, 2e-3]),
]
METHODS_QUICK = [("Revised ProxQuant ℓ1", "revised_proxquant", 1.0, [6e-4])]  # the whole protocol, one compile


def channel_scales_available() -> bool:
    """Whether ``pg.prox_quantize`` learns scales (``scale="channel"``)."""
    return "scale" in inspect.signature(pg.prox_quantize).parameters


def _val_split(split, seed=0, frac=0.2):
    x_tr, y_tr, _, _ = split
    rng = np.random.default_rng(seed + 100)
    idx = rng.permutation(x_tr.shape[0])
    n_val = int(frac * x_tr.shape[0])
    return x_tr[idx[n_val:]], y_tr[idx[n_val:]], x_tr[idx[:n_val]], y_tr[idx[:n_val]]


def _ramped(opt, q, steps):
    """``λ_final → tx`` with ``λ_t = λ_final · min(t, steps)/steps``; ``λ_final`` lives in the optimizer state
    (``optax.inject_hyperparams``), so every λ_rate and seed of a row reuses one compiled step."""
    from proxgen_jax.baselines.proxquant import proxquant

    def factory(lam_final):
        if opt == "proxquant":
            return proxquant(LR, lam_final, ramp_steps=steps, q=q, levels=BINARY_LEVELS, clip=True, mask=binary_mask)
        ramp = lambda count: lam_final * jnp.minimum(count, steps) / steps  # noqa: E731
        if opt == "revised_proxquant":
            return pg.revised_proxquant(LR, q, ramp, levels=BINARY_LEVELS, mask=binary_mask)
        return optax.chain(pg.scale_by_adam_precond(),  # revised_proxquant_channel
                           pg.prox_quantize(BINARY_LEVELS, q, ramp, LR, scale="channel", mask=binary_mask))

    return optax.inject_hyperparams(factory)


def _run(opt, q, rate, seed, data, epochs, freeze, channels=(16, 32)):
    """One run of the protocol; ``rate`` is λ per epoch (λ at the freeze point = rate · freeze)."""
    lam = rate * freeze
    base = "revised_proxquant" if opt == "revised_proxquant_channel" else opt
    cfg = RunConfig(task="binary", model="resnet", dataset="digits", regularizer="binary", q=q, lam=lam,
                    optimizer=base, epochs=epochs, lr=LR, seed=seed, diagnostics=False, channels=tuple(channels),
                    freeze_epoch=None if opt == "adam" else freeze, finetune_lr=LR)
    spec = build_optimizer(base, task="binary", q=q, lam=lam, lr=LR)
    if base in ("proxquant", "revised_proxquant"):
        steps = max(data[0].shape[0] // cfg.batch_size, 1) * freeze
        spec = dataclasses.replace(spec, name=opt, tx=_ramped(opt, q, steps)(lam_final=lam))
    h = train_run(cfg, data, progress=False, spec=spec)
    h["lam_rate"] = rate
    return h


def _plot(rows, runs, path, title, freeze):
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for i, r in enumerate(rows):
        rs = [h for h in runs if h["label"] == r["method"]]
        x = rs[0]["epoch"]
        axes[1].plot(x, 100 * np.mean([h["test_acc"] for h in rs], 0), label=r["method"], color=f"C{i}")
        if r["optimizer"] not in ("adam", "revised_proxquant_channel"):  # scaled levels: not ±1 before rounding
            axes[0].plot(x, 100 * np.mean([h["quantized_fraction"] for h in rs], 0), color=f"C{i}")
    for ax, yl in zip(axes[:2], ["% binarised weights exactly on ±1", "test accuracy % (hard ±1, current BN)"]):
        ax.axvline(freeze + 0.5, color="k", lw=0.8, ls=":")
        ax.set_xlabel("epoch (dotted: hard quantisation + freeze)")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(0, 100)
    axes[1].legend(fontsize=6)
    ys = np.arange(len(rows))
    axes[2].barh(ys, [r["test_error_mean"] for r in rows], xerr=[r["test_error_std"] for r in rows], color="C0")
    axes[2].set_yticks(ys, [r["method"] for r in rows], fontsize=7)
    axes[2].invert_yaxis()
    axes[2].set_xlabel("final test error % (mean ± std over seeds)")
    axes[2].grid(alpha=0.3, axis="x")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _table(rows) -> str:
    """The markdown table of :func:`main`'s rows."""
    lines = ["| method | λ_rate /epoch (selected) | test error % | on ±1 before rounding | "
             "acc. % at freeze: unrounded / rounded / BN re-estimated | acc. % after fine-tune |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        err = f"{r['test_error_mean']:.2f} ± {r['test_error_std']:.2f}"
        if r["optimizer"] == "adam":
            lines.append(f"| {r['method']} | — | {err} | — | — | {100 - r['test_error_mean']:.1f} |")
            continue
        lam = "—" if r["optimizer"] == "binary_connect" else f"{r['lam_rate']:g}"
        on = {"binary_connect": "— (binary forward)", "revised_proxquant_channel": "n/a (scaled levels)"}.get(
            r["optimizer"], f"{100 * r['quantized_fraction']:.0f} %")
        accs = " / ".join(f"{100 * r[k]:.1f}" for k in ("test_acc_latent", "test_acc_train_stats",
                                                        "test_acc_bn_reestimated"))
        lines.append(f"| {r['method']} | {lam} | {err} | {on} | {accs} | {100 - r['test_error_mean']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/table3")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=None, help="total epochs (default 30; --quick 2)")
    p.add_argument("--freeze-epoch", type=int, default=None, help="hard quantisation after this epoch (default 24)")
    p.add_argument("--seeds", type=int, default=None)
    args = p.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 30)
    freeze = args.freeze_epoch or (1 if args.quick else max(1, round(0.8 * epochs)))
    seeds = args.seeds or (1 if args.quick else 3)
    methods = METHODS_QUICK if args.quick else METHODS_FULL
    channels = (8,) if args.quick else (16, 32)  # --quick: a one-stage ResNet (compiles faster)
    skipped = []
    if not channel_scales_available():
        skipped = [m[0] for m in methods if m[1] == "revised_proxquant_channel"]
        methods = [m for m in methods if m[1] != "revised_proxquant_channel"]
    os.makedirs(args.out, exist_ok=True)
    # Seeds and phases share compiled steps (same HLO, different values): a per-process compilation cache.
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="table3_jit_"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    t0 = time.perf_counter()

    selection, chosen = [], {}
    val = _val_split(load_digits_split(seed=0))
    for col, opt, q, grid in methods:
        if len(grid) == 1:
            chosen[col] = grid[0]
            continue
        scores = []
        for rate in grid:
            h = _run(opt, q, rate, 0, val, epochs, freeze, channels)
            scores.append(h["final"]["test_error"])
            selection.append({"method": col, "lam_rate": rate, "lam_at_freeze": rate * freeze,
                              "val_error": h["final"]["test_error"],
                              "on_level_at_freeze": h["freeze"]["quantized_fraction"]})
            print(f"select {col} λ_rate={rate:g}/epoch: val error {scores[-1]:.3f}, on ±1 at freeze "
                  f"{h['freeze']['quantized_fraction']:.2f}", flush=True)
        chosen[col] = grid[int(np.argmin(scores))]

    runs = []
    for seed in range(seeds):
        split = load_digits_split(seed=seed)
        for col, opt, q, _ in methods:
            h = _run(opt, q, chosen[col], seed, split, epochs, freeze, channels)
            h["label"] = col
            runs.append(h)
            print(f"seed {seed} {col}: test error {h['final']['test_error']:.3f}", flush=True)

    def stat(rs, f):
        return float(np.mean([f(r) for r in rs]))

    rows = []
    for col, opt, q, grid in methods:
        rs = [r for r in runs if r["label"] == col]
        errs = np.asarray([r["final"]["test_error"] for r in rs]) * 100
        row = {"method": col, "optimizer": opt, "q": q, "lam_rate": chosen[col], "lam_at_freeze": chosen[col] * freeze,
               "grid": grid, "test_error_mean": float(errs.mean()), "test_error_std": float(errs.std()),
               "seeds": int(errs.size)}
        if opt != "adam":
            row.update({k: stat(rs, lambda r, k=k: r["freeze"][k]) for k in
                        ("quantized_fraction", "test_acc_latent", "test_acc_train_stats", "test_acc_bn_reestimated")})
            row["first_epoch_all_on_level"] = stat(rs, lambda r: next(  # before the rounding only
                (e for e, f in zip(r["epoch"], r["quantized_fraction"]) if f >= 0.999 and e <= freeze), float("nan")))
        rows.append(row)

    table = _table(rows)
    wall = time.perf_counter() - t0
    with open(os.path.join(args.out, "table3.json"), "w") as f:
        json.dump({"epochs": epochs, "freeze_epoch": freeze, "channels": list(channels), "seeds": seeds, "lr": LR,
                   "selection": selection, "rows": rows, "skipped": skipped, "runs": runs, "wall_time_s": wall}, f)
    with open(os.path.join(args.out, "table3_table.md"), "w") as f:
        f.write(table + "\n")
    _plot(rows, runs, os.path.join(args.out, "table3_curves.png"), freeze=freeze,
          title=f"binary small ResNet on digits: {freeze} epochs (λ ramp) + {epochs - freeze} BN fine-tune epochs, "
                f"{seeds} seed(s)")
    print(f"\nTable 3 at CPU scale — binary small ResNet on digits, {epochs} epochs (hard quantisation after "
          f"{freeze}), {seeds} seed(s)\n")
    print(table)
    if skipped:
        print(f"\nnot run (pg.prox_quantize has no `scale`): {', '.join(skipped)}")
    print(f"\n{wall:.0f} s")


if __name__ == "__main__":
    main()
