"""Issue 16: accuracy at equal sparsity — budgets projected in Adam's metric vs the magnitude rules users know.

Digits (sklearn 8×8, 1347 train / 450 test), ``SmallCNN`` (Conv16–Conv32–Linear) and ``SmallResNet`` (stem16, two
stages of one basic block, BatchNorm), Adam constants, α = 3e-3, batch 64. Budgets on the kernels (the first
layer — 9 inputs per filter — kept dense, as is usual; the 2:4 pattern cannot block its single input channel
anyway): 50/80/90/95 % unstructured (each kernel its own budget), 2:4 along the input axis, 50 % of the output
filters/neurons of every hidden kernel. Methods:

* **metric** — ``chain(scale_by_adam_precond(), prox_sparsity / prox_nm)``: ProxGen's exact projection in the metric
  ``C_t+δI`` (units ranked by ``c_i z_i²``);
* **euclid** — the same links after a plain ``optax.scale_by_adam()``: the projection ranks ``|z_i|`` — the rule of
  torchao's PAT (and of jaxpruner's magnitude masks), re-selected every step;
* **gmp** — gradual magnitude pruning (Zhu & Gupta; jaxpruner's default): ``optax.adam``, then a magnitude top-k
  mask on the parameters, recomputed every 10 steps along the same ramp; pruned weights stay zero (they cannot
  regrow). For 2:4 it is one-shot magnitude 2:4 at the ramp's end after dense training, then masked fine-tuning;
* **l1+ctrl** — ℓ1 (group ℓ1,2 for filters) with ``λ_t`` set by the λ controller (``pg.target_sparsity``, one
  controller per kernel) to follow the same ramp; not defined for 2:4.

The unstructured and filter budgets follow Zhu & Gupta's ramp (``pg.sparsity_schedule``, power 3) from 10 % to 60 %
of the steps; metric/euclid freeze the zero pattern from 75 % of the steps (PAT's healing), gmp's mask is fixed from
the ramp's end. Every (model, method, budget kind) is one compiled program vmapped over seeds × sparsities. Test
accuracy is the final iterate's; the sparsity column is measured on the budgeted kernels (exact zeros; for 2:4 the
fraction of 4-blocks meeting the pattern is checked too).

Usage:
  python benchmarks/budgets.py [--quick] [--out DIR] [--seeds N] [--steps N] [--models cnn,resnet]
  (full: 2 models × 3 seeds, ~20 min on a shared 2-core CPU; --quick: CNN, 1 seed, 50/90 % and 2:4, 150 steps)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import proxgen_jax as pg
from proxgen_jax._tree import key_name, resolve_mask
from proxgen_jax.solvers.budgets import budget_count, nm_mask
from proxgen_jax.solvers.selection import top_k_mask
from proxgen_jax.train.data import load_digits_split
from proxgen_jax.train.models import make_model
from proxgen_jax.transforms.budgets import default_nm_axis

METHODS = ("metric", "euclid", "gmp", "l1+ctrl")
LEVELS = (0.5, 0.8, 0.9, 0.95)
QUICK_LEVELS = (0.5, 0.9)
LR, BATCH = 3e-3, 64
RAMP = (0.1, 0.6)  # fractions of the steps: Zhu & Gupta ramp begins / ends
FREEZE = 0.75  # metric / euclid: zero pattern frozen from here (healing)
GMP_EVERY = 10


# --------------------------------------------------------------------------------------------- masks
def _first_layer(path) -> bool:
    names = [key_name(k) for k in path]
    return "stem" in names or any(a == "convs" and b == "0" for a, b in zip(names[:-1], names[1:]))


def prunable(params):
    """Kernels except the first layer (``convs[0]`` / ``stem``)."""
    kern = pg.kernels_only(params)
    return jax.tree_util.tree_map_with_path(lambda p, on: bool(on) and not _first_layer(p), kern)


def hidden_prunable(params):
    """:func:`prunable` without the classifier head (a zero output neuron there would be a whole class)."""
    kern = prunable(params)
    return jax.tree_util.tree_map_with_path(lambda p, on: bool(on) and "head" not in [key_name(k) for k in p], kern)


def nm_prunable(params):
    """:func:`prunable` kernels whose input axis is divisible by 4."""
    kern = prunable(params)
    return jax.tree.map(lambda x, on: bool(on) and np.shape(x)[default_nm_axis(x)] % 4 == 0, params, kern)


KINDS = {"unstructured": prunable, "2:4": nm_prunable, "filters": hidden_prunable}


# --------------------------------------------------------------------------------------------- GMP baseline
class GMPState(NamedTuple):
    count: jax.Array
    masks: Any


def gradual_magnitude_pruning(schedule, *, mask, begin: int, end: int, every: int = GMP_EVERY,
                              groups: bool = False, nm: tuple[int, int] | None = None) -> optax.GradientTransformation:
    """Zhu & Gupta's gradual magnitude pruning as a link after ``optax.adam`` (jaxpruner's default rule).

    Applies ``θ_{t+1} = (θ_t + u_t) ⊙ M_t``. ``M_t`` keeps the ``⌊(1 − s_t)·n⌋`` largest ``|θ|`` (output units by
    their ℓ2 norm with ``groups``) of the masked parameters, recomputed every ``every`` steps in ``[begin, end]``
    and fixed afterwards; pruned weights are zero so they never regrow. ``nm=(n, m)``: one-shot magnitude N:M
    along the input axis at step ``end`` (dense before).
    """
    def init(params):
        flags = resolve_mask(mask, params)
        leaves, tdef = jax.tree.flatten(params)
        return GMPState(jnp.zeros([], jnp.int32),
                        tdef.unflatten([jnp.ones(jnp.shape(x), bool) if on else jnp.ones((), bool)
                                        for x, on in zip(leaves, flags)]))

    def select(x, s):
        a = jnp.abs(x)
        if nm is not None:
            return nm_mask(a, nm[0], nm[1], default_nm_axis(x))
        if groups:
            score = jnp.sqrt(jnp.sum(a * a, axis=tuple(range(x.ndim - 1)), keepdims=True))
            return jnp.broadcast_to(top_k_mask(score, budget_count(s, score.size)), x.shape)
        return top_k_mask(a, budget_count(s, a.size))

    def update(updates, state, params):
        t = state.count
        if nm is not None:
            refresh = t == end
        else:
            refresh = (t >= begin) & (t <= end) & ((t - begin) % every == 0)
        s_t = schedule(t)
        flags = resolve_mask(mask, params)
        leaves, tdef = jax.tree.flatten(params)
        out, masks = [], []
        for x, u, m, on in zip(leaves, tdef.flatten_up_to(updates), tdef.flatten_up_to(state.masks), flags):
            if not on:
                out.append(u)
                masks.append(m)
                continue
            new = (x + u) * m
            m = jax.lax.cond(refresh, lambda new=new, m=m: select(new, s_t) & m, lambda m=m: m)
            out.append(new * m - x)
            masks.append(m)
        return tdef.unflatten(out), GMPState(t + 1, tdef.unflatten(masks))

    return optax.GradientTransformation(init, update)


# --------------------------------------------------------------------------------------------- methods
def make_tx(method: str, kind: str, s, steps: int) -> optax.GradientTransformation | None:
    """The optimizer of one (method, budget kind) at final sparsity ``s`` (traced); ``None``: not defined."""
    begin, end = int(RAMP[0] * steps), int(RAMP[1] * steps)
    sched = pg.sparsity_schedule(s, begin_step=begin, end_step=end)
    mask, groups = KINDS[kind], kind == "filters"
    if method == "dense":
        return optax.adam(LR)
    if method in ("metric", "euclid"):
        pre = pg.scale_by_adam_precond() if method == "metric" else optax.scale_by_adam()
        if kind == "2:4":
            return optax.chain(pre, pg.prox_nm(2, 4, LR, mask=mask))
        return optax.chain(pre, pg.prox_sparsity(sched, LR, mask=mask, freeze_after=int(FREEZE * steps),
                                                 group_axes=pg.output_unit_groups if groups else None))
    if method == "gmp":
        return optax.chain(optax.adam(LR), gradual_magnitude_pruning(
            sched, mask=mask, begin=begin, end=end, groups=groups, nm=(2, 4) if kind == "2:4" else None))
    if method == "l1+ctrl":
        if kind == "2:4":
            return None
        def reg(path, leaf):
            if groups:
                return pg.regularizers.GroupL12(group_axes=tuple(range(jnp.ndim(leaf) - 1)))
            return pg.regularizers.L1()
        return optax.chain(pg.scale_by_adam_precond(),
                           pg.target_sparsity(reg, sched, learning_rate=LR, per_leaf=True, mask=mask))
    raise ValueError(method)


# --------------------------------------------------------------------------------------------- training
class Task:
    """One model on digits: the graph, per-seed initial params / statistics and minibatch orders."""

    def __init__(self, model: str, steps: int):
        x_tr, y_tr, x_te, y_te = load_digits_split(seed=0)
        self.x_tr, self.y_tr, self.x_te, self.y_te = map(jnp.asarray, (x_tr, y_tr, x_te, y_te))
        self.name, self.steps = model, steps
        m = make_model(model, x_tr.shape[1:], 10, seed=0)
        m.train()
        self.gdef_train = nnx.split(m, nnx.Param, ...)[0]
        m.eval()
        self.gdef_eval = nnx.split(m, nnx.Param, ...)[0]

    def init(self, seed):
        m = make_model(self.name, self.x_tr.shape[1:], 10, seed=seed)
        _, p, rest = nnx.split(m, nnx.Param, ...)
        return nnx.to_pure_dict(p), nnx.to_pure_dict(rest)

    def order(self, seed):
        n = self.x_tr.shape[0]
        rng = np.random.default_rng(1000 + seed)
        per = n // BATCH
        idx = np.concatenate([rng.permutation(n)[: per * BATCH].reshape(per, BATCH)
                              for _ in range(-(-self.steps // per))])
        return idx[: self.steps]

    def program(self, method: str, kind: str, tx_fn=None):
        """``(params, rest, order, s) -> (params, test accuracy, mean train loss of the last 20 steps)``: a Python
        loop over one jitted, donated step (compiled once per method and kind; ``s`` is traced). Neither
        ``lax.scan`` nor ``vmap`` over seeds: XLA:CPU runs these convolutions 3–20× slower inside a loop or
        batched over kernels. ``tx_fn(s)`` replaces :func:`make_tx` when given."""
        make = tx_fn or (lambda s: make_tx(method, kind, s, steps))
        gtr, gev, x_tr, y_tr, x_te, y_te, steps = (self.gdef_train, self.gdef_eval, self.x_tr, self.y_tr,
                                                    self.x_te, self.y_te, self.steps)

        def loss_fn(p, rest, xb, yb):
            m = nnx.merge(gtr, p, rest)
            loss = optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()
            return loss, nnx.to_pure_dict(nnx.split(m, nnx.Param, ...)[2])

        @jax.jit
        def init(p, s):
            return make(s).init(p)

        @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
        def step(p, rest, state, idx, s):
            (loss, rest), g = jax.value_and_grad(loss_fn, has_aux=True)(p, rest, x_tr[idx], y_tr[idx])
            u, state = make(s).update(g, state, p)
            return optax.apply_updates(p, u), rest, state, loss

        @jax.jit
        def accuracy(p, rest):
            return jnp.mean(jnp.argmax(nnx.merge(gev, p, rest)(x_te), -1) == y_te)

        def run(p, rest, order, s):
            s = jnp.float32(s)
            p, rest = jax.tree.map(jnp.copy, (p, rest))  # donated below
            state, losses = init(p, s), []
            for idx in np.asarray(order):
                p, rest, state, loss = step(p, rest, state, idx, s)
                losses.append(loss)
            return p, float(accuracy(p, rest)), float(np.mean(jax.device_get(losses[-20:])))

        return run


def structure(params, kind: str) -> dict:
    """Sparsity of the budgeted kernels (exact zeros) and, for 2:4, whether every 4-block along the input axis
    has at most 2 nonzeros."""
    zeros = total = 0
    holds = True
    for x, on in zip(jax.tree.leaves(params), resolve_mask(KINDS[kind], params)):
        if not on:
            continue
        a = np.asarray(x)
        zeros += int(np.sum(a == 0))
        total += a.size
        if kind == "2:4":
            b = np.moveaxis(a, default_nm_axis(a), -1)
            holds &= bool(np.all(np.sum(b.reshape(*b.shape[:-1], -1, 4) != 0, -1) <= 2))
    out = {"sparsity": zeros / total}
    if kind == "2:4":
        out["pattern_holds"] = holds
    return out


def run_study(models, seeds: int, steps: dict, levels, log=print) -> list[dict]:
    rows = []
    for model in models:
        task = Task(model, steps[model])
        inits = [task.init(s) for s in range(seeds)]
        for kind, lv in (("dense", (0.0,)), ("unstructured", levels), ("2:4", (0.5,)), ("filters", (0.5,))):
            for method in (("dense",) if kind == "dense" else METHODS):
                kk = "unstructured" if kind == "dense" else kind
                if make_tx(method, kk, 0.5, task.steps) is None:
                    continue
                t0 = time.perf_counter()
                program = task.program(method, kk)
                for s in lv:
                    res = [program(*inits[seed], task.order(seed), s) for seed in range(seeds)]
                    st = [structure(p, kk) for p, _, _ in res]
                    row = dict(model=model, kind=kind, target=float(s), method=method, seeds=seeds,
                               acc=[a for _, a, _ in res], loss=[v for _, _, v in res],
                               sparsity=[x["sparsity"] for x in st])
                    if kk == "2:4":
                        row["pattern_holds"] = all(x["pattern_holds"] for x in st)
                    row["acc_mean"], row["acc_std"] = float(np.mean(row["acc"])), float(np.std(row["acc"]))
                    row["sparsity_mean"] = float(np.mean(row["sparsity"]))
                    rows.append(row)
                    log(f"[budgets] {model} {kind} {s:g} {method}: acc {100 * row['acc_mean']:.1f} ± "
                        f"{100 * row['acc_std']:.1f} %, sparsity {100 * row['sparsity_mean']:.2f} % "
                        f"({time.perf_counter() - t0:.0f} s so far)", flush=True)
    return rows


def _budget_name(r) -> str:
    return {"dense": "dense", "2:4": "2:4", "filters": "50 % filters"}.get(r["kind"], f"{100 * r['target']:g} %")


def table(rows, seeds: int) -> str:
    """One Markdown table per model: budget × method, test accuracy mean ± std (achieved sparsity)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mr = [r for r in rows if r["model"] == model]
        dense = next((r for r in mr if r["kind"] == "dense"), None)
        out += [f"{model} on digits, test accuracy % (mean ± std over {seeds} seeds; budgeted-kernel sparsity "
                f"reached in brackets)" + (f"; dense Adam {100 * dense['acc_mean']:.1f} ± "
                                           f"{100 * dense['acc_std']:.1f} %" if dense else "") + ":", "",
                "| budget | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
        keys = list(dict.fromkeys((r["kind"], r["target"]) for r in mr if r["kind"] != "dense"))
        for kind, target in keys:
            cells = []
            best = max(r["acc_mean"] for r in mr if (r["kind"], r["target"]) == (kind, target))
            for method in METHODS:
                r = next((r for r in mr if (r["kind"], r["target"], r["method"]) == (kind, target, method)), None)
                if r is None:
                    cells.append("n/a")
                    continue
                c = f"{100 * r['acc_mean']:.1f} ± {100 * r['acc_std']:.1f} ({100 * r['sparsity_mean']:.1f})"
                cells.append(f"**{c}**" if r["acc_mean"] == best else c)
            out.append(f"| {_budget_name(dict(kind=kind, target=target))} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def findings(rows) -> list[str]:
    """Where the metric projection wins and where it does not, computed from the rows (mean ± std)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mr = [r for r in rows if r["model"] == model and r["kind"] != "dense"]
        wins, ties, losses = [], [], []
        for kind, target in dict.fromkeys((r["kind"], r["target"]) for r in mr):
            cell = {r["method"]: r for r in mr if (r["kind"], r["target"]) == (kind, target)}
            me = cell.get("metric")
            others = {k: v for k, v in cell.items() if k != "metric"}
            if me is None or not others:
                continue
            best_k = max(others, key=lambda k: others[k]["acc_mean"])
            b = others[best_k]
            d = 100 * (me["acc_mean"] - b["acc_mean"])
            noise = 100 * max(me["acc_std"], b["acc_std"], 1 / 450) + 1e-6  # one std, and at least one test digit
            name = _budget_name(me)
            text = f"{name} ({d:+.1f} pt vs {best_k})"
            (wins if d > noise else losses if -d > noise else ties).append(text)
        out.append(f"- **{model}**: the metric projection beats the best other method by more than one std at "
                   + (", ".join(wins) if wins else "no budget") + "; within one std at "
                   + (", ".join(ties) if ties else "none") + "; loses by more than one std at "
                   + (", ".join(losses) if losses else "none") + ".")
        me_vs_eu = [100 * (a["acc_mean"] - b["acc_mean"]) for a in mr for b in mr
                    if a["method"] == "metric" and b["method"] == "euclid" and (a["kind"], a["target"]) ==
                    (b["kind"], b["target"])]
        if me_vs_eu:
            pairs = [(a, b) for a in mr for b in mr if a["method"] == "metric" and b["method"] == "euclid"
                     and (a["kind"], a["target"]) == (b["kind"], b["target"])]
            better = sum(x > y for a, b in pairs for x, y in zip(a["acc"], b["acc"]))
            worse = sum(x < y for a, b in pairs for x, y in zip(a["acc"], b["acc"]))
            out.append("  Metric − Euclidean projection (same link, same schedule): "
                       + ", ".join(f"{v:+.1f}" for v in me_vs_eu) + " pt (budgets in table order); seed by seed "
                       f"(same initial weights and batches) the metric is better in {better}, worse in {worse} "
                       f"of {sum(len(a['acc']) for a, _ in pairs)} paired runs.")
        dense = next((r for r in rows if r["model"] == model and r["kind"] == "dense"), None)
        ctrl = [r for r in mr if r["method"] == "l1+ctrl"]
        if dense and ctrl:
            worst = min(ctrl, key=lambda r: r["acc_mean"])
            gap = 100 * max(abs(r["sparsity_mean"] - r["target"]) for r in ctrl)
            out.append(f"  ℓ1 + λ controller: reaches the sparsity (within {gap:.1f} pt) but its accuracy is the "
                       f"lowest at every budget, down to {100 * worst['acc_mean']:.1f} ± "
                       f"{100 * worst['acc_std']:.1f} % at {_budget_name(worst)} "
                       f"(dense {100 * dense['acc_mean']:.1f} %): the penalty shrinks every kept weight and gets no "
                       "healing phase."
                       if all(r["acc_mean"] <= min(q["acc_mean"] for q in mr if (q["kind"], q["target"]) ==
                                                   (r["kind"], r["target"])) for r in ctrl) else
                       f"  ℓ1 + λ controller: within {gap:.1f} pt of the sparsity; worst accuracy "
                       f"{100 * worst['acc_mean']:.1f} % at {_budget_name(worst)}.")
    return out


def plot(rows, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        mr = [r for r in rows if r["model"] == model]
        for method, mk in zip(METHODS, "osd^"):
            rs = sorted((r for r in mr if r["method"] == method and r["kind"] == "unstructured"),
                        key=lambda r: r["target"])
            if rs:
                ax.errorbar([100 * r["sparsity_mean"] for r in rs], [100 * r["acc_mean"] for r in rs],
                            yerr=[100 * r["acc_std"] for r in rs], marker=mk, capsize=3, label=method)
        dense = next((r for r in mr if r["kind"] == "dense"), None)
        if dense:
            ax.axhline(100 * dense["acc_mean"], color="gray", ls="--", lw=1, label="dense Adam")
        ax.set_xlabel("sparsity of the budgeted kernels %")
        ax.set_ylabel("test accuracy %")
        ax.set_title(f"{model} on digits: unstructured budgets")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "budgets"))
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="training steps (default 1000 CNN, 600 ResNet)")
    ap.add_argument("--models", default=None, help="comma-separated: cnn,resnet")
    ap.add_argument("--report-only", action="store_true", help="recompute table, findings and PNG from OUT's JSON")
    args = ap.parse_args(argv)
    if args.report_only:
        path = os.path.join(args.out, "budgets.json")
        with open(path) as f:
            result = json.load(f)
        result["table"], result["findings"] = table(result["rows"], result["seeds"]), findings(result["rows"])
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
        plot(result["rows"], os.path.join(args.out, "budgets.png"))
        print(result["table"] + "\n\nFindings:\n" + "\n".join(result["findings"]))
        return result
    models = (args.models or ("cnn" if args.quick else "cnn,resnet")).split(",")
    seeds = args.seeds or (1 if args.quick else 3)
    default_steps = {"cnn": 150, "resnet": 150} if args.quick else {"cnn": 1000, "resnet": 600}
    steps = {m: args.steps or default_steps[m] for m in models}
    levels = QUICK_LEVELS if args.quick else LEVELS
    t0 = time.perf_counter()
    print(f"[budgets] models {models}, {seeds} seed(s), steps {steps}, levels {levels}; backend "
          f"{jax.default_backend()}, {os.cpu_count()} CPUs", flush=True)
    rows = run_study(models, seeds, steps, levels)
    text = table(rows, seeds)
    notes = findings(rows)
    print("\n" + text + "\n\nFindings:\n" + "\n".join(notes))
    os.makedirs(args.out, exist_ok=True)
    result = dict(benchmark="budgets", quick=args.quick, models=models, seeds=seeds, steps=steps,
                  levels=list(levels), lr=LR, batch=BATCH, ramp=RAMP, freeze=FREEZE, gmp_every=GMP_EVERY,
                  jax=jax.__version__, machine=platform.machine(), cpus=os.cpu_count(), rows=rows, table=text,
                  findings=notes, wall_s=time.perf_counter() - t0)
    with open(os.path.join(args.out, "budgets.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot(rows, os.path.join(args.out, "budgets.png"))
    print(f"\nwrote {args.out}/budgets.json and budgets.png in {result['wall_s']:.0f} s")
    return result


if __name__ == "__main__":
    main()
