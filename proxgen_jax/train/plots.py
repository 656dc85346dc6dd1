"""PNG plots of training runs: per-epoch curves, the sparsity–accuracy trade-off and Theorem-1 diagnostics.

Runs are the histories returned by :func:`proxgen_jax.train.loop.train_run`; runs sharing a ``label`` (and λ)
are different seeds and are drawn as mean ± std. Uses matplotlib's Agg backend; figures are small (dpi 80).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def group_runs(runs: Sequence[dict], by_lam: bool = True) -> OrderedDict[str, list[dict]]:
    """Groups runs by ``label`` (and ``λ`` when several λ were run) — one group per method, seeds inside."""
    lams = {r["config"]["lam"] for r in runs}
    groups: OrderedDict[str, list[dict]] = OrderedDict()
    for r in runs:
        key = r["label"] + (f" λ={r['config']['lam']:g}" if by_lam and len(lams) > 1 and
                            r["config"]["optimizer"] != "adam" else "")
        groups.setdefault(key, []).append(r)
    return groups


def _band(ax, x, ys, label):
    ys = np.asarray(ys, np.float64)
    m = ys.mean(0)
    line, = ax.plot(x, m, label=label)
    if ys.shape[0] > 1:
        s = ys.std(0)
        ax.fill_between(x, m - s, m + s, alpha=0.2, color=line.get_color())



def _save(plt, fig, path: str, title: str) -> str:
    """Titles, lays out, writes (80 dpi) and closes ``fig``; returns ``path``."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

def plot_curves(runs: Sequence[dict], path: str, title: str = "") -> str:
    """Objective ``F = f + λR`` (train), test accuracy and sparsity per epoch, one line per method."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, rs in group_runs(runs).items():
        n = min(len(r["epoch"]) for r in rs)
        x = rs[0]["epoch"][:n]
        _band(axes[0], x, [r["objective"][:n] for r in rs], name)
        _band(axes[1], x, [r["test_acc"][:n] for r in rs], name)
        key = "group_sparsity" if rs[0]["config"]["task"] == "group" else "sparsity"
        _band(axes[2], x, [r[key][:n] for r in rs], name)
    axes[0].set_ylabel("objective F(θ) = f + λR (train)")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("test accuracy")
    axes[2].set_ylabel("sparsity (exact zeros)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    return _save(plt, fig, path, title)


def plot_tradeoff(runs: Sequence[dict], path: str, title: str = "") -> str:
    """Final sparsity vs final test accuracy, one point per run (colour per method)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, rs in group_runs(runs, by_lam=False).items():
        key = "group_sparsity" if rs[0]["config"]["task"] == "group" else "sparsity"
        ax.scatter([r["final"][key] for r in rs], [r["final"]["test_acc"] for r in rs], label=name, s=25)
    ax.set_xlabel("sparsity (fraction of exact zeros)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(plt, fig, path, title)


def plot_diagnostics(runs: Sequence[dict], path: str, title: str = "") -> str:
    """(C-3): ``‖θ_{t+1}−θ_t‖`` and ``‖g_t‖`` per step; (C-4): ``min_i α_t/(C_{t,i}+δ)`` per step (first seed)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for name, rs in group_runs(runs).items():
        ps = rs[0]["per_step"]
        for ax, k in zip(axes, ("step_norm", "grad_norm", "min_step")):
            if ps.get(k):
                ax.plot(np.arange(1, len(ps[k]) + 1), ps[k], label=name, lw=0.8)
    for ax, lab in zip(axes, ("‖θ_{t+1} − θ_t‖₂  (C-3 i)", "‖g_t‖₂  (C-3 ii)", "min_i α_t/(C_t,i+δ)  (C-4)")):
        ax.set_xlabel("step t")
        ax.set_ylabel(lab)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    return _save(plt, fig, path, title)


def plot_all(runs: Sequence[dict], out_dir: str, prefix: str = "", title: str = "") -> list[str]:
    """Writes ``{prefix}curves.png``, ``{prefix}tradeoff.png`` and ``{prefix}diagnostics.png`` into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    return [plot_curves(runs, os.path.join(out_dir, f"{prefix}curves.png"), title),
            plot_tradeoff(runs, os.path.join(out_dir, f"{prefix}tradeoff.png"), title),
            plot_diagnostics(runs, os.path.join(out_dir, f"{prefix}diagnostics.png"), title)]
