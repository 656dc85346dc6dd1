"""``python -m proxgen_jax.train``: train structured networks end to end and compare optimizers.

Every combination of ``--optimizer`` × ``--regularizer`` × ``--lam`` × seed is one run (``adam`` runs once per
seed: it is the unregularised reference). Prints a summary table (test accuracy, sparsity, objective
``F = f + λR`` per method, mean ± std over seeds), writes ``OUT/results.json`` and PNG plots
(``curves.png``: F / test accuracy / sparsity per epoch; ``tradeoff.png``: sparsity vs accuracy across runs;
``diagnostics.png``: the Theorem-1 quantities of (C-3)/(C-4) per step).

Examples::

    python -m proxgen_jax.train --quick
    python -m proxgen_jax.train --task sparse --model cnn --regularizer lhalf l1 \\
        --optimizer proxgen_adam subgradient_adam --lam 1e-3 --epochs 20 --seeds 3 --out runs/sparse
    python -m proxgen_jax.train --task binary --model resnet --optimizer adam binary_connect proxquant \\
        revised_proxquant --q 1 --lam 1e-4 --epochs 15
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from proxgen_jax.train.optimizers import OPTIMIZERS, REGULARIZERS, TASKS

TASK_DEFAULTS = {
    "sparse": dict(model="cnn", regularizer=["lhalf"], optimizer=["proxgen_adam", "subgradient_adam"], lam=[1e-3]),
    "binary": dict(model="resnet", regularizer=["binary"], optimizer=["adam", "binary_connect", "proxquant",
                                                                      "revised_proxquant"], lam=[1e-4]),
    "group": dict(model="mlp", regularizer=["group"], optimizer=["proxgen_adam", "subgradient_adam"], lam=[1e-3]),
}
QUICK_EPOCHS = 4


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m proxgen_jax.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=TASKS, default="sparse")
    p.add_argument("--model", choices=("mlp", "cnn", "resnet"), default=None,
                   help="default: cnn (sparse), resnet (binary; mlp with --scale), mlp (group)")
    p.add_argument("--dataset", default="digits", help="digits | mnist1d | tfds:NAME (needs tensorflow-datasets)")
    p.add_argument("--regularizer", nargs="+", choices=REGULARIZERS, default=None,
                   help="one or more; binary task: dist(θ, ±1)^q with --q")
    p.add_argument("--bits", type=int, default=None, help="binary task: bits per weight (default: ±1)")
    p.add_argument("--scale", choices=("tensor", "channel"), default=None,
                   help="binary task: learn the levels' scale per tensor / output channel (all kernels quantised)")
    p.add_argument("--q", type=float, default=None, help="exponent for lq / binary (default 0.5 / 1.0)")
    p.add_argument("--lam", nargs="+", type=float, default=None, help="λ (several values: a trade-off sweep)")
    p.add_argument("--optimizer", nargs="+", choices=OPTIMIZERS, default=None)
    p.add_argument("--epochs", type=int, default=None, help=f"default 10 ({QUICK_EPOCHS} with --quick)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="α (constant)")
    p.add_argument("--sparsity", type=float, default=None,
                   help="budget: exactly this fraction of every kernel's weights zero, projected in Adam's metric "
                        "(prox_sparsity; Zhu & Gupta ramp, then the zero pattern frozen); default optimizer "
                        "proxgen_adam, no penalty unless --regularizer")
    p.add_argument("--nm", default=None, metavar="N:M",
                   help="budget: at most N nonzeros in every M consecutive inputs of each kernel (prox_nm), e.g. 2:4")
    p.add_argument("--budget-scope", choices=("leaf", "global"), default="leaf",
                   help="--sparsity per kernel (leaf) or one budget over all kernels (global)")
    p.add_argument("--budget-units", choices=("weights", "filters"), default="weights",
                   help="--sparsity counts weights or whole output filters / neurons")
    p.add_argument("--freeze-at", type=float, default=0.75,
                   help="--sparsity: fraction of training after which the zero pattern is frozen (1: never)")
    p.add_argument("--out", default="runs/train", help="output directory for results.json and PNGs")
    p.add_argument("--quick", action="store_true", help="a < 1–2 min smoke run: ProxGen ℓ½ vs subgradient ℓ½")
    p.add_argument("--no-progress", action="store_true", help="disable the tqdm progress bar")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--compact", action="store_true",
                   help="after training, compact the model (proxgen_jax.compact) and print the compaction "
                        "report, the smaller model's accuracy and its latency")
    return p


def _fmt(vals: Sequence[float], pct: bool = True, digits: int = 1) -> str:
    a = np.asarray(vals, np.float64) * (100.0 if pct else 1.0)
    if a.size > 1:
        return f"{a.mean():.{digits}f} ± {a.std():.{digits}f}"
    return f"{a.mean():.{digits}f}"


def summarize_runs(runs: Sequence[dict]) -> list[dict]:
    """One row per method (label, λ): mean/std over seeds of the final metrics."""
    from proxgen_jax.train.plots import group_runs
    rows = []
    for name, rs in group_runs(runs).items():
        fin = lambda k, rs=rs: [r["final"][k] for r in rs]  # noqa: E731
        rows.append({"method": name, "seeds": len(rs), "lam": rs[0]["config"]["lam"],
                     "test_acc_mean": float(np.mean(fin("test_acc"))), "test_acc_std": float(np.std(fin("test_acc"))),
                     "test_error_mean": float(np.mean(fin("test_error"))),
                     "test_error_std": float(np.std(fin("test_error"))),
                     "sparsity_mean": float(np.mean(fin("sparsity"))), "sparsity_std": float(np.std(fin("sparsity"))),
                     "group_sparsity_mean": float(np.mean(fin("group_sparsity"))),
                     "objective_mean": float(np.mean(fin("objective"))),
                     "objective_std": float(np.std(fin("objective"))),
                     "time_s_mean": float(np.mean(fin("time_s"))),
                     "compile_s_mean": float(np.mean([r["final"].get("compile_s", np.nan) for r in rs])),
                     "train_s_mean": float(np.mean([r["final"].get("train_s", np.nan) for r in rs]))})
    return rows


def format_table(runs: Sequence[dict], task: str = "sparse") -> str:
    """A Markdown table: method, test accuracy %, sparsity %, objective F, jit compile time and train time (the
    wall time without compilation: training steps and per-epoch evaluation)."""
    from proxgen_jax.train.plots import group_runs
    sp_key = "group_sparsity" if task == "group" else "sparsity"
    sp_name = "zero units %" if task == "group" else "sparsity %"
    lines = [f"| method | seeds | test acc % | {sp_name} | objective F | compile s | train s |",
             "|---|---|---|---|---|---|---|"]
    for name, rs in group_runs(runs).items():
        fin = lambda k, rs=rs: [r["final"][k] for r in rs]  # noqa: E731
        compile_s, train_s = (np.mean([r["final"].get(k, np.nan) for r in rs]) for k in ("compile_s", "train_s"))
        lines.append(f"| {name} | {len(rs)} | {_fmt(fin('test_acc'))} | {_fmt(fin(sp_key))} | "
                     f"{_fmt(fin('objective'), pct=False, digits=3)} | {compile_s:.1f} | {train_s:.1f} |")
    return "\n".join(lines)


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fills task-dependent defaults (model, regularizers, optimizers, λ, q, epochs)."""
    d = TASK_DEFAULTS[args.task]
    if _budget(args) is not None:  # a budget needs no penalty; proxgen_adam projects onto it
        d = dict(d, regularizer=["none"], optimizer=["proxgen_adam"], lam=[0.0])
    args.model = args.model or ("mlp" if getattr(args, "scale", None) else d["model"])
    args.regularizer = args.regularizer or list(d["regularizer"])
    args.optimizer = args.optimizer or list(d["optimizer"])
    args.lam = args.lam or list(d["lam"])
    if args.q is None:
        args.q = 1.0 if args.task == "binary" else 0.5
    if args.epochs is None:
        args.epochs = QUICK_EPOCHS if args.quick else 10
    if args.quick:
        args.seeds = min(args.seeds, 1)
    for name, v in (("epochs", args.epochs), ("seeds", args.seeds), ("batch-size", args.batch_size)):
        if v < 1:
            raise SystemExit(f"--{name} must be >= 1, got {v}")
    if args.lr <= 0 or any(lam < 0 for lam in args.lam):
        raise SystemExit("--lr must be > 0 and --lam >= 0")
    return args


def _budget(args: argparse.Namespace):
    """The :class:`~proxgen_jax.train.budgets.Budget` of ``--sparsity`` / ``--nm`` (``None`` without either)."""
    from proxgen_jax.train.budgets import Budget, parse_nm
    sp, nm = getattr(args, "sparsity", None), getattr(args, "nm", None)
    if sp is None and nm is None:
        return None
    try:
        if sp is not None and nm is not None:
            raise ValueError("give --sparsity or --nm, not both")
        if nm is not None:
            n, m = parse_nm(nm)
            return Budget("nm", n=n, m=m)
        return Budget("sparsity", sparsity=sp, scope=args.budget_scope, units=args.budget_units,
                      freeze_at=None if args.freeze_at >= 1 else args.freeze_at)
    except ValueError as err:
        raise SystemExit(str(err)) from None


def run_grid(args: argparse.Namespace, data=None) -> list[dict]:
    """Trains every (optimizer, regularizer, λ, seed) combination; returns the run histories."""
    from proxgen_jax.train.budgets import train_budget_run
    from proxgen_jax.train.data import load_dataset
    from proxgen_jax.train.loop import RunConfig, train_run
    budget = _budget(args)
    runs = []
    for seed in range(args.seeds):
        split = data if data is not None else load_dataset(args.dataset, seed=seed)
        for opt in args.optimizer:
            regs = args.regularizer[:1] if opt == "adam" else args.regularizer
            lams = args.lam[:1] if opt == "adam" else args.lam
            for reg in regs:
                if opt == "l0_hc" and reg != "l0":
                    continue  # ℓ0-hc approximates ℓ0 only
                for lam in lams:
                    cfg = RunConfig(task=args.task, model=args.model, dataset=args.dataset, regularizer=reg, q=args.q,
                                    lam=lam, optimizer=opt, epochs=args.epochs, batch_size=args.batch_size,
                                    lr=args.lr, seed=seed, bits=getattr(args, "bits", None),
                                    scale=getattr(args, "scale", None))
                    if getattr(args, "compact", False):
                        runs.append(compact_run(cfg, split, budget, progress=not args.no_progress))
                        continue
                    runs.append(train_run(cfg, split, progress=not args.no_progress) if budget is None else
                                train_budget_run(cfg, split, budget, progress=not args.no_progress))
    return runs


def main(argv: Sequence[str] | None = None) -> dict:
    """Entry point; returns the ``results.json`` content."""
    args = resolve_args(build_parser().parse_args(argv))
    t0 = time.perf_counter()
    runs = run_grid(args)
    table = format_table(runs, args.task)
    os.makedirs(args.out, exist_ok=True)
    results = {"args": vars(args), "summary": summarize_runs(runs), "table": table, "runs": runs,
               "wall_time_s": time.perf_counter() - t0}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plots = []
    if not args.no_plots:
        from proxgen_jax.train.plots import plot_all
        title = f"{args.task}: {args.model} on {args.dataset}"
        plots = plot_all(runs, args.out, title=title)
    print(f"\n{args.task} task — {args.model} on {args.dataset}, {args.epochs} epochs, lr={args.lr:g}, "
          f"λ={', '.join(f'{v:g}' for v in args.lam)}, {args.seeds} seed(s)\n")
    print(table)
    from proxgen_jax.train.budgets import format_structure
    structure = format_structure(runs)
    if structure:
        print("\n" + structure)
    for r in runs:
        if "compaction" in r:
            print(f"\n{r['label']} (seed {r['config']['seed']}):\n" + format_compaction(r["compaction"]))
    print(f"\nwrote {os.path.join(args.out, 'results.json')}" + (f" and {len(plots)} PNGs" if plots else "")
          + f" in {results['wall_time_s']:.0f} s")
    sys.stdout.flush()
    return results


def trained_model(run, data):
    """The trained network of a :class:`~proxgen_jax.train.loop.TrainedRun` as an nnx module (eval mode).

    Parameters from ``run.params``, BatchNorm statistics from ``run.model_state``; the module is checked
    to reproduce ``run.logits`` on test inputs (``RuntimeError`` otherwise), so nothing is rebuilt approximately.
    """
    import jax.numpy as jnp

    from proxgen_jax.compaction.measure import with_state
    from proxgen_jax.train.models import make_model
    cfg = run.history["config"]
    if "gates" in run.params:
        raise ValueError("gated (ℓ0-hc) runs have no single parameter tree to compact")
    x_tr, y_tr, x_te, y_te = data
    model = make_model(cfg["model"], x_tr.shape[1:], int(max(y_tr.max(), y_te.max())) + 1, seed=cfg["seed"],
                       hidden=cfg["hidden"], channels=cfg["channels"])
    model = with_state(model, run.params, run.model_state)
    model.eval()
    x = jnp.asarray(x_te[:64])
    want, got = np.asarray(run.logits(run.params, x)), np.asarray(model(x))
    if np.max(np.abs(want - got)) > 1e-5 * max(float(np.max(np.abs(want))), 1e-30):
        raise RuntimeError("the rebuilt nnx model does not reproduce the trained run's logits")
    return model


def compact_run(cfg, data, budget=None, *, progress: bool = True, repeats: int = 30) -> dict:
    """``--compact``: one training run (with ``budget``, if given: e.g. ``--sparsity 0.5 --budget-units filters``
    makes whole filters zero, which compaction removes), then :func:`proxgen_jax.compaction_report` on the trained
    model and the accuracy and jitted latency (batch 1 and 256) of the dense and the compacted model;
    ``history["compaction"]``."""
    import jax.numpy as jnp

    from proxgen_jax.compaction import compaction_report
    from proxgen_jax.compaction.measure import compare
    from proxgen_jax.train.budgets import budget_spec, with_budget
    from proxgen_jax.train.loop import _train
    run = _train(cfg, data, progress=progress, spec=None if budget is None else budget_spec(cfg, data, budget),
                 log_state=None)
    if budget is not None:
        run = with_budget(run, cfg, budget)
    dense = trained_model(run, data)
    rep = compaction_report(dense, jnp.asarray(data[2][:8]))
    cmp = compare(dense, rep.model, data[2], data[3], batch_sizes=(1, 256), repeats=repeats)
    run.history["compaction"] = {"table": str(rep), "totals": rep.totals, **cmp}
    return run.history


def format_compaction(c: dict) -> str:
    """The printed block of ``--compact``: the per-layer report, accuracy and latency, dense vs compacted."""
    t = c["totals"]
    lines = [c["table"], "",
             f"parameters {t['params_before']:,} → {t['params_after']:,} "
             f"({t['bytes_before']:,} → {t['bytes_after']:,} bytes); FLOPs/example {t['flops_before']:,} → "
             f"{t['flops_after']:,}; max relative output difference {t['output_rel_error']:.1e}",
             f"test accuracy: dense {100 * c['acc_dense']:.2f} %, compacted {100 * c['acc_small']:.2f} %"]
    for b, lt in c["latency"].items():
        lines.append(f"latency (jitted, CPU, batch {b}): dense {lt['dense_ms']:.3f} ms, compacted "
                     f"{lt['small_ms']:.3f} ms ({lt['speedup']:.2f}×)")
    return "\n".join(lines)
