"""Budgets in the training command: ``--sparsity S`` and ``--nm N:M`` on the kernels, and the structure reached.

A :class:`Budget` turns into the prox link of the ProxGen chain (:func:`budget_tx`):

* ``sparsity`` — :func:`~proxgen_jax.prox_sparsity` on every kernel (``scope`` ``"leaf"``: each kernel keeps
  ``⌊(1 − s)·n⌋`` weights; ``"global"``: one budget over all kernels), with Zhu & Gupta's ramp
  (:func:`~proxgen_jax.sparsity_schedule`, from 0 to ``s`` over the first ``ramp_end`` of the steps) and PAT's
  healing (the zero pattern frozen after ``freeze_at`` of the steps, the rest training freely); ``units="filters"``
  makes whole output filters / neurons the units (:func:`~proxgen_jax.output_unit_groups`).
* ``nm`` — :func:`~proxgen_jax.prox_nm` along each kernel's reduction (input) axis, on every kernel whose input
  length is divisible by ``m`` (a 1-channel first conv cannot be blocked and stays dense: the report says so).

After the Adam preconditioner the projection is in the metric ``C_t+δI`` (ProxGen); with ``euclidean=True``
it follows a plain ``optax.scale_by_adam()``: magnitude pruning, PAT's rule.

:func:`layer_structure` measures what a run reached per kernel: its sparsity, and for N:M the fraction of
``m``-blocks with at most ``n`` nonzeros (1.0: the pattern holds everywhere).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from proxgen_jax._tree import kernels_only, path_str, resolve_mask

DEFAULT_RAMP_END = 0.5
DEFAULT_FREEZE_AT = 0.75


@dataclasses.dataclass(frozen=True)
class Budget:
    """A structure target for the kernels.

    Attributes:
      kind: ``"sparsity"`` or ``"nm"``.
      sparsity: the final sparsity ``s`` (``kind="sparsity"``).
      n, m: at most ``n`` nonzeros in every ``m`` consecutive inputs (``kind="nm"``).
      scope: ``"leaf"`` or ``"global"`` (``kind="sparsity"``).
      units: ``"weights"`` or ``"filters"`` (``kind="sparsity"``; filters: output filters / neurons).
      ramp_end: the ramp reaches ``s`` at this fraction of the steps (0: ``s`` from the first step).
      freeze_at: the zero pattern is frozen from this fraction of the steps on (``None`` or ≥ 1: never).
    """

    kind: str
    sparsity: float = 0.0
    n: int = 2
    m: int = 4
    scope: str = "leaf"
    units: str = "weights"
    ramp_end: float = DEFAULT_RAMP_END
    freeze_at: float | None = DEFAULT_FREEZE_AT

    def __post_init__(self):
        if self.kind not in ("sparsity", "nm"):
            raise ValueError(f"budget kind must be 'sparsity' or 'nm', got {self.kind!r}")
        if self.kind == "sparsity" and not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity!r}")
        if self.kind == "nm" and not 1 <= self.n <= self.m:
            raise ValueError(f"N:M needs 1 <= N <= M, got {self.n}:{self.m}")
        if self.scope not in ("leaf", "global") or self.units not in ("weights", "filters"):
            raise ValueError(f"scope must be leaf|global and units weights|filters, got {self.scope!r}, "
                             f"{self.units!r}")
        if not 0.0 <= self.ramp_end <= 1.0:
            raise ValueError(f"ramp_end must be in [0, 1], got {self.ramp_end!r}")

    def describe(self) -> str:
        """A short label: ``sparsity 0.9``, ``sparsity 0.5 filters global``, ``2:4``."""
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        extra = "".join(f" {v}" for v, d in ((self.units, "weights"), (self.scope, "leaf")) if v != d)
        return f"sparsity {self.sparsity:g}{extra}"


def parse_nm(text: str) -> tuple[int, int]:
    """``"2:4"`` → ``(2, 4)``; ``ValueError`` otherwise."""
    try:
        n, m = (int(v) for v in str(text).split(":"))
    except ValueError:
        raise ValueError(f"--nm must look like N:M (e.g. 2:4), got {text!r}") from None
    return n, m


def nm_kernels(m: int):
    """A mask: the kernels whose reduction axis (0 of ``(in, out)``, −2 of a conv) has a length divisible by ``m``."""
    from proxgen_jax.transforms.budgets import default_nm_axis

    def mask(params):
        kern = kernels_only(params)

        def ok(leaf, on):
            ax = default_nm_axis(leaf)
            return bool(on) and ax is not None and jnp.shape(leaf)[ax] % m == 0
        return jax.tree.map(ok, params, kern)
    return mask


def _hidden_unit_groups(path, leaf):
    """One group per output filter / neuron of every kernel but the classifier's (``head``: its output units are
    the classes, which a filter budget must not remove)."""
    from proxgen_jax.transforms.prox_group import output_unit_groups
    if any(getattr(k, "key", None) == "head" for k in path):
        return None
    return output_unit_groups(path, leaf)


def budget_tx(budget: Budget, learning_rate: float, total_steps: int, *, euclidean: bool = False,
              regularizer: Any = None, lam: float = 0.0) -> optax.GradientTransformation:
    """``chain(preconditioner, budget)``: ProxGen's Adam metric (default) or a plain Adam step (``euclidean``)."""
    from proxgen_jax.preconditioners import scale_by_adam_precond
    from proxgen_jax.transforms.budgets import prox_nm, prox_sparsity
    from proxgen_jax.transforms.sparsity_recipes import sparsity_schedule
    pre = optax.scale_by_adam() if euclidean else scale_by_adam_precond()
    if budget.kind == "nm":
        link = prox_nm(budget.n, budget.m, learning_rate, regularizer=regularizer, lam=lam,
                          mask=nm_kernels(budget.m))
        return optax.chain(pre, link)
    end = int(round(budget.ramp_end * total_steps))
    sched = budget.sparsity if end < 1 else sparsity_schedule(budget.sparsity, begin_step=0, end_step=end)
    freeze = None
    if budget.freeze_at is not None and budget.freeze_at < 1.0:
        freeze = max(int(round(budget.freeze_at * total_steps)), end)
    groups = _hidden_unit_groups if budget.units == "filters" else None
    link = prox_sparsity(sched, learning_rate, group_axes=groups, scope=budget.scope, regularizer=regularizer,
                            lam=lam, mask=kernels_only, freeze_after=freeze)
    return optax.chain(pre, link)


def _nm_blocks_ok(a: np.ndarray, n: int, m: int, axis: int) -> float:
    """The fraction of blocks of ``m`` consecutive entries along ``axis`` with at most ``n`` nonzeros."""
    b = np.moveaxis(a, axis, -1)
    b = b.reshape(*b.shape[:-1], b.shape[-1] // m, m)
    return float(np.mean(np.sum(b != 0, axis=-1) <= n))


def layer_structure(params: Any, budget: Budget) -> list[dict]:
    """Per kernel: ``{"layer", "shape", "size", "sparsity", "budgeted"}`` plus, for N:M, ``"nm_blocks_ok"`` (the
    fraction of ``m``-blocks along the reduction axis meeting the pattern; ``None`` where it cannot be blocked)
    and, for filter budgets, ``"zero_filters"`` (the fraction of all-zero output units)."""
    from proxgen_jax.transforms.budgets import default_nm_axis
    flags = resolve_mask(kernels_only, params)
    nm_flags = resolve_mask(nm_kernels(budget.m), params) if budget.kind == "nm" else flags
    out = []
    for (path, leaf), on, blocked in zip(jax.tree_util.tree_flatten_with_path(params)[0], flags, nm_flags):
        if not on:
            continue
        a = np.asarray(leaf)
        if budget.kind == "sparsity" and budget.units == "filters":
            blocked = _hidden_unit_groups(path, leaf) is not None
        row = {"layer": path_str(path), "shape": list(a.shape), "size": int(a.size),
               "sparsity": float(np.mean(a == 0)), "budgeted": bool(blocked)}
        if budget.kind == "nm":
            row["nm_blocks_ok"] = _nm_blocks_ok(a, budget.n, budget.m, default_nm_axis(a)) if blocked else None
        elif budget.units == "filters":
            row["zero_filters"] = float(np.mean(np.all(a.reshape(-1, a.shape[-1]) == 0, axis=0)))
        out.append(row)
    return out


def format_structure(runs: list[dict]) -> str:
    """A Markdown table of the structure reached per kernel, one column per budget run (first seed)."""
    seen, picked = set(), []
    for r in runs:
        if "structure" in r and r["label"] not in seen:
            seen.add(r["label"])
            picked.append(r)
    if not picked:
        return ""
    nm = any(r["budget"]["kind"] == "nm" for r in picked)
    filters = any(r["budget"].get("units") == "filters" for r in picked)
    lines = ["| kernel | shape | " + " | ".join(r["label"] for r in picked) + " |",
             "|---|---|" + "---|" * len(picked)]
    for i, row in enumerate(picked[0]["structure"]):
        cells = []
        for r in picked:
            s = r["structure"][i]
            cell = f"{100 * s['sparsity']:.1f} %"
            if r["budget"]["kind"] == "nm":
                ok, pattern = s.get("nm_blocks_ok"), f"{r['budget']['n']}:{r['budget']['m']}"
                cell += " (dense: not blockable)" if ok is None else f", {100 * ok:.1f} % blocks {pattern}"
            elif filters and "zero_filters" in s:
                cell += f", {100 * s['zero_filters']:.1f} % zero filters"
            cells.append(cell)
        lines.append(f"| {row['layer']} | {tuple(row['shape'])} | " + " | ".join(cells) + " |")
    head = "sparsity per kernel" + (" and the fraction of m-blocks meeting N:M" if nm else "")
    return f"Achieved structure ({head}, seed 0):\n\n" + "\n".join(lines)


def budget_spec(cfg, data, budget: Budget):
    """The optimizer of a run of ``cfg`` on ``data`` with ``budget`` on the kernels (its ramp spans the run)."""
    from proxgen_jax.train.optimizers import build_optimizer
    steps = max(np.shape(data[0])[0] // cfg.batch_size, 1) * cfg.epochs
    return build_optimizer(cfg.optimizer, task=cfg.task, regularizer=cfg.regularizer, q=cfg.q, lam=cfg.lam,
                           lr=cfg.lr, total_steps=steps, budget=budget)


def train_budget_run(cfg, data, budget: Budget, *, progress: bool = True) -> dict:
    """One run of the training loop with ``budget`` on the kernels; the history gains ``"budget"`` and
    ``"structure"`` (:func:`layer_structure` of the final parameters) and a label naming the budget."""
    from proxgen_jax.train.loop import _train
    run = _train(cfg, data, progress=progress, spec=budget_spec(cfg, data, budget), log_state=None)
    return with_budget(run, cfg, budget).history


def with_budget(run, cfg, budget: Budget):
    """``run`` with its history labelled by ``budget`` and the achieved per-layer structure."""
    hist = run.history
    hist["budget"] = dataclasses.asdict(budget)
    if cfg.optimizer != "adam":
        reg = "" if cfg.regularizer == "none" else f"+{cfg.regularizer}"
        hist["label"] = f"{cfg.optimizer}[{budget.describe()}{reg}]"
    hist["structure"] = layer_structure(run.params, budget)
    return run
