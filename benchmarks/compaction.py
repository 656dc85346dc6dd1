"""Compaction end to end: filter-sparse digits CNN and small ResNet → ``pg.compact`` → parameters, FLOPs, latency.

Every conv kernel (4-D leaf) is regularised with one group per output filter (``pg.output_unit_groups``); the
classifier and biases/BatchNorm are not. Two ways to zero filters, each at three strengths:

* **group ℓ1,2** — ``chain(scale_by_adam_precond(), prox_group_l12(λ, α, group_axes=output_unit_groups))``, λ fixed
  per model from a calibration run (the removed fraction is what it measures, not a target);
* **filter budget** — ``prox_sparsity(s, α, group_axes=output_unit_groups)`` (exactly ``⌊s·n⌋`` zero filters per
  conv kernel, ``s`` ramped with ``sparsity_schedule`` over the first half of training), s = 0.3 / 0.6 / 0.8.

Each trained model is rebuilt as an nnx module (checked against the training loop's own logits), compacted with
``pg.compaction_report`` (which verifies the outputs, ≤ 1e-5 relative), and both are measured on the test set:
accuracy, parameters, FLOPs per example, and the median latency of a jitted CPU forward pass at batch 1 and 256
(dense and compact calls interleaved; the machine is shared, so absolute times move between runs). "zero filters"
counts conv filters with all-zero weights; "removed" those the compaction took out — a zero filter whose constant
output (``relu(bias)``, or BatchNorm's shift) is nonzero and feeds a zero-padded 3×3 conv must stay (folding would
be wrong at the borders), and in the ResNet a residual channel goes only if every branch lets it go. The last
column compacts with ``multiple_of=8`` (removable filters kept until every width is a multiple of 8, still exact):
XLA's CPU convolutions run odd widths far slower per FLOP than multiples of 8.

Usage::

    python benchmarks/compaction.py --out benchmarks/results/compaction [--quick]

Writes ``OUT/compaction.json``, ``OUT/compaction_table.md`` and ``OUT/compaction.png`` (latency vs removed fraction).
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
from proxgen_jax.compaction.measure import compare
from proxgen_jax.train.cli import trained_model
from proxgen_jax.train.data import load_digits_split
from proxgen_jax.train.loop import fit

LR = 3e-3
#: λ of the group rows per model, from calibration runs (CNN 15 epochs: λ = 0.03 / 0.1 → 23 / 50 % removed)
LAMS = {"cnn": [0.04, 0.1, 0.16], "resnet": [0.1, 0.2, 0.3]}
BUDGETS = [0.3, 0.6, 0.8]


def conv_kernels(params):
    """Mask: the 4-D leaves (conv kernels)."""
    return jax.tree.map(lambda a: np.ndim(a) == 4, params)


def _tx(kind: str, strength: float, steps: int):
    if kind == "dense":
        return optax.adam(LR)
    if kind == "group":
        prox = pg.prox_group_l12(strength, LR, group_axes=pg.output_unit_groups, mask=conv_kernels)
    else:
        s = pg.sparsity_schedule(strength, begin_step=0, end_step=max(steps // 2, 1))
        prox = pg.prox_sparsity(s, LR, group_axes=pg.output_unit_groups, mask=conv_kernels)
    return optax.chain(pg.scale_by_adam_precond(), prox)


def _zero_filters(params) -> tuple[int, int]:
    zero = total = 0
    for leaf in jax.tree.leaves(params):
        if np.ndim(leaf) == 4:
            a = np.asarray(leaf).reshape(-1, np.shape(leaf)[-1])
            zero, total = zero + int(np.all(a == 0, axis=0).sum()), total + a.shape[1]
    return zero, total


def one_row(model: str, kind: str, strength: float, data, epochs: int, repeats: int) -> dict:
    steps = (data[0].shape[0] // 64) * epochs
    t0 = time.perf_counter()
    run = fit(_tx(kind, strength, steps), data, epochs=epochs, model=model, mask=conv_kernels)
    train_s = time.perf_counter() - t0
    dense = trained_model(run, data)
    rep = pg.compaction_report(dense, jnp.asarray(data[2][:8]))
    conv = [r for r in rep.layers if r["class"] == "Conv"]
    before, after = sum(r["units_before"] for r in conv), sum(r["units_after"] for r in conv)
    zero, total = _zero_filters(run.params)
    m = compare(dense, rep.model, data[2], data[3], batch_sizes=(1, 256), repeats=repeats)
    rep8 = pg.compaction_report(dense, jnp.asarray(data[2][:8]), multiple_of=8)
    m8 = compare(dense, rep8.model, data[2], data[3], batch_sizes=(256,), repeats=repeats)
    t = rep.totals
    return {"model": model, "kind": kind, "strength": strength, "epochs": epochs, "train_s": train_s,
            "acc_history": run.history["final"]["test_acc"], "acc_dense": m["acc_dense"], "acc_small": m["acc_small"],
            "zero_filters": zero / total, "removed_filters": 1 - after / before, "filters": [before, after],
            "params": [t["params_before"], t["params_after"]], "flops": [t["flops_before"], t["flops_after"]],
            "output_rel_error": t["output_rel_error"], "latency": m["latency"],
            "rounded8": {"params": rep8.totals["params_after"], "flops": rep8.totals["flops_after"],
                         "acc": m8["acc_small"], "latency": m8["latency"],
                         "filters": sum(r["units_after"] for r in rep8.layers if r["class"] == "Conv")},
            "layers": [{k: r[k] for k in ("layer", "units_before", "units_after")} for r in conv]}


def _label(r) -> str:
    return {"dense": "Adam (no reg.)", "group": f"group ℓ1,2 λ={r['strength']:g}",
            "budget": f"filter budget s={r['strength']:g}"}[r["kind"]]


def _lat(lt, digits) -> str:
    """Fastest call of each (wall), and the median CPU time per call, dense → compact (speed-ups)."""
    return (f"{lt['dense_min_ms']:.{digits}f} → {lt['small_min_ms']:.{digits}f} "
            f"({lt['dense_min_ms'] / lt['small_min_ms']:.2f}×); CPU {lt['dense_cpu_ms']:.{digits}f} → "
            f"{lt['small_cpu_ms']:.{digits}f} ({lt['dense_cpu_ms'] / lt['small_cpu_ms']:.2f}×)")


CAPTION = ("Digits test set. Latency of a jitted CPU forward pass, dense → compact: fastest of N interleaved calls "
           "(wall ms, speed-up), then the median CPU time per call (all threads; less disturbed by other jobs on the "
           "shared 2-core machine). Accuracy and outputs of the compact model equal the dense one's (checked to 1e-5 "
           "relative). 'widths ×8': compacted with `multiple_of=8`.")


def table(rows) -> str:
    lines = [CAPTION, "",
             "| model | training | zero filters | removed filters | params | FLOPs/example | acc dense → compact | "
             "batch 1 ms (dense → compact) | batch 256 ms (dense → compact) | widths ×8: FLOPs, batch 256 ms |",
             "|" + "---|" * 10]
    for r in rows:
        l1, l256 = r["latency"][1], r["latency"][256]
        lines.append(
            f"| {r['model']} | {_label(r)} | {100 * r['zero_filters']:.0f} % | {100 * r['removed_filters']:.0f} % | "
            f"{r['params'][0]:,} → {r['params'][1]:,} | {r['flops'][0]:,} → {r['flops'][1]:,} | "
            f"{100 * r['acc_dense']:.1f} → {100 * r['acc_small']:.1f} % | {_lat(l1, 3)} | {_lat(l256, 2)} | "
            f"{r['rounded8']['flops']:,}, {_lat(r['rounded8']['latency'][256], 2)} |")
    return "\n".join(lines)


def _plot(rows, path):
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    for ax, (b, key) in zip(axes, ((1, None), (256, None), (256, "rounded8"))):
        for model, mk in (("cnn", "o"), ("resnet", "s")):
            for kind, color in (("group", "C0"), ("budget", "C1"), ("dense", "k")):
                rs = sorted((r for r in rows if r["model"] == model and r["kind"] == kind),
                            key=lambda r: r["removed_filters"])
                lats = [(r[key] if key else r)["latency"][b] for r in rs]
                if rs:
                    ax.plot([100 * r["removed_filters"] for r in rs],
                            [lt["dense_cpu_ms"] / lt["small_cpu_ms"] for lt in lats],
                            marker=mk, color=color, ls="-" if model == "cnn" else "--", label=f"{model}, {kind}")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xlabel("removed conv filters % (exact compaction)")
        ax.set_title(f"batch {b}" + (", widths rounded up to ×8" if key else ""), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("CPU time per call, dense / compact")
    axes[0].legend(fontsize=7)
    fig.suptitle("jitted CPU forward pass, digits", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/compaction")
    p.add_argument("--quick", action="store_true", help="CNN only, one group and one budget row, 2 epochs")
    p.add_argument("--epochs", type=int, default=None, help="default: CNN 15, ResNet 10 (--quick 2)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    data = load_digits_split()
    repeats = 5 if args.quick else 40
    plan = []
    for model in (["cnn"] if args.quick else ["cnn", "resnet"]):
        epochs = args.epochs or (2 if args.quick else {"cnn": 15, "resnet": 10}[model])
        lams, budgets = (LAMS[model][1:2], BUDGETS[1:2]) if args.quick else (LAMS[model], BUDGETS)
        plan += [(model, "dense", 0.0, epochs)] + [(model, "group", lam, epochs) for lam in lams] + \
                [(model, "budget", s, epochs) for s in budgets]
    rows = []
    for model, kind, strength, epochs in plan:
        rows.append(one_row(model, kind, strength, data, epochs, repeats))
        r = rows[-1]
        print(f"[compaction] {model} {_label(r)}: removed {100 * r['removed_filters']:.0f} % of filters, acc "
              f"{100 * r['acc_dense']:.1f} → {100 * r['acc_small']:.1f} %, {time.perf_counter() - t0:.0f} s",
              flush=True)
    text = table(rows)
    result = {"rows": rows, "lr": LR, "wall_time_s": time.perf_counter() - t0, "quick": args.quick,
              "jax_version": jax.__version__, "table": text}
    with open(os.path.join(args.out, "compaction.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "compaction_table.md"), "w") as f:
        f.write(text + "\n")
    _plot(rows, os.path.join(args.out, "compaction.png"))
    print(f"\nCompacted models (N = {repeats}):\n")
    print(text)
    print(f"\nwrote {args.out} in {result['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
