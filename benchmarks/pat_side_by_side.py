"""Side by side with torchao's PAT itself: the digits CNN at 50 %, 90 % and 2:4, accuracy at equal sparsity.

Same data split, the same initial weights (our Flax ``SmallCNN``'s, copied into ``torch.nn.Conv2d`` / ``Linear``),
the same minibatch order, batch 64, Adam with α = 3e-3, the same number of steps; the first conv (9 inputs per
filter) stays dense on both sides, as in ``benchmarks/budgets.py``.

* **torchao PAT** — ``PruneOptimizer(torch.optim.Adam, warmup_steps=10 %, healing_start_step=75 %)`` with
  ``MinSparsityConstraint`` on ``KElementGrouper(k=1)`` (per-tensor magnitude; ``min_sparsity_schedule=True``: PAT's
  cubic ramp from the warmup to the healing start) and ``NMSparseConstraint(n_nonzero=2)`` on ``KElementGrouper(k=4)``
  (4 consecutive entries of each output row; for the conv, of the flattened ``(in, kh, kw)`` row, PyTorch's
  layout). PAT applies the projection to a dense *latent* copy that Adam keeps updating (pruned weights can regrow
  until healing freezes the zeros).
* **ours** — ``chain(scale_by_adam_precond(), prox_sparsity(sparsity_schedule(...), freeze_after=75 %))`` (the
  projection in Adam's metric) and the same link after ``optax.scale_by_adam()`` (Euclidean: PAT's magnitude
  rule, applied to the pruned iterate, not to a latent copy); ``prox_nm(2, 4)`` blocks along the input-channel axis
  (the reduction axis in the NHWC layout) from the first step.

Needs ``torch`` and ``torchao`` with ``torchao.prototype.pat`` (``pip install proxgen_jax[torch]``; PAT ships in
torchao 0.18's prototype namespace); without them it writes ``{"skipped": reason}`` and exits 0.

Usage::

    python benchmarks/pat_side_by_side.py --out benchmarks/results/pat [--quick] [--seeds N] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

LR, BATCH = 3e-3, 64
WARMUP, HEAL = 0.1, 0.75
LEVELS = (0.5, 0.9)


def _pat_available() -> str | None:
    try:
        import torch  # noqa: F401
        from torchao.prototype.pat.optim import MinSparsityConstraint, NMSparseConstraint, PruneOptimizer  # noqa: F401
    except Exception as err:  # noqa: BLE001  (ImportError, or a torch/torchao mismatch raising at import)
        return f"torch / torchao PAT not importable: {type(err).__name__}: {err}"
    return None


def _torch_cnn(params):
    """Our ``SmallCNN`` (Conv16–Conv32–maxpool–Linear) in PyTorch with ``params`` copied in (NHWC → NCHW)."""
    import torch
    from torch import nn

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv0 = nn.Conv2d(1, 16, 3, padding=1)
            self.conv1 = nn.Conv2d(16, 32, 3, padding=1)
            self.head = nn.Linear(512, 10)

        def forward(self, x):  # x: (N, 1, 8, 8)
            x = torch.relu(self.conv0(x))
            x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
            return self.head(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))  # flatten in Flax's (h, w, c) order

    m = CNN()
    with torch.no_grad():
        for i in (0, 1):
            k = np.asarray(params["convs"][i]["kernel"])  # (kh, kw, in, out)
            getattr(m, f"conv{i}").weight.copy_(torch.from_numpy(k.transpose(3, 2, 0, 1).copy()))
            getattr(m, f"conv{i}").bias.copy_(torch.from_numpy(np.array(params["convs"][i]["bias"])))
        m.head.weight.copy_(torch.from_numpy(np.asarray(params["head"]["kernel"]).T.copy()))
        m.head.bias.copy_(torch.from_numpy(np.array(params["head"]["bias"])))
    return m


def pat_run(kind: str, s: float, params, order, data, steps: int) -> dict:
    """One PAT training run; returns test accuracy and the sparsity of the pruned kernels."""
    import torch
    from torchao.prototype.pat.optim import PruneOptimizer
    x_tr, y_tr, x_te, y_te = data
    model = _torch_cnn(params)
    pruned = [model.conv1.weight, model.head.weight]
    rest = [p for p in model.parameters() if all(p is not q for q in pruned)]
    if kind == "2:4":
        cfg = dict(prox_type="NMSparseConstraint", n_nonzero=2, group_type="KElementGrouper", k=4)
    elif kind == "dense":
        cfg = None
    else:
        cfg = dict(prox_type="MinSparsityConstraint", min_sparsity=float(s), min_sparsity_schedule=True,
                   group_type="KElementGrouper", k=1)
    groups = [{"params": rest}] + ([{"params": pruned, **cfg}] if cfg else [{"params": pruned}])
    base = torch.optim.Adam(groups, lr=LR)
    opt = PruneOptimizer(base, warmup_steps=int(WARMUP * steps), healing_start_step=int(HEAL * steps)) if cfg else base
    xt, yt = torch.from_numpy(np.asarray(x_tr).transpose(0, 3, 1, 2).copy()), torch.from_numpy(np.asarray(y_tr))
    loss_fn = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for idx in order:
        idx = torch.from_numpy(np.asarray(idx))
        opt.zero_grad()
        loss_fn(model(xt[idx]), yt[idx].long()).backward()
        opt.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        xe = torch.from_numpy(np.asarray(x_te).transpose(0, 3, 1, 2).copy())
        acc = float((model(xe).argmax(-1).numpy() == np.asarray(y_te)).mean())
        w = [p.detach().numpy() for p in pruned]
    out = dict(acc=acc, sparsity=float(sum((a == 0).sum() for a in w) / sum(a.size for a in w)), seconds=seconds)
    if kind == "2:4":
        out["pattern_holds"] = bool(all(np.all((a.reshape(a.shape[0], -1).reshape(-1, 4) != 0).sum(-1) <= 2)
                                        for a in w))
    return out


def ours_tx(method: str, kind: str, s, steps: int):
    """Ours, on PAT's schedule: the ramp from 10 % to the healing start, zeros frozen from there."""
    import optax
    from budgets import KINDS

    import proxgen_jax as pg
    pre = pg.scale_by_adam_precond() if method == "metric" else optax.scale_by_adam()
    if kind == "dense":
        return optax.adam(LR)
    if kind == "2:4":
        return optax.chain(pre, pg.prox_nm(2, 4, LR, mask=KINDS["2:4"]))
    heal = int(HEAL * steps)
    sched = pg.sparsity_schedule(s, begin_step=int(WARMUP * steps), end_step=heal - 1)
    return optax.chain(pre, pg.prox_sparsity(sched, LR, mask=KINDS["unstructured"], freeze_after=heal))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "pat"))
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    reason = _pat_available()
    if reason:
        print(f"[pat] skipped: {reason}")
        with open(os.path.join(args.out, "pat_side_by_side.json"), "w") as f:
            json.dump({"skipped": reason}, f)
        return {"skipped": reason}
    import jax
    import torch
    import torchao
    from budgets import Task, structure
    torch.set_num_threads(1)
    seeds = args.seeds or (1 if args.quick else 3)
    steps = args.steps or (150 if args.quick else 1000)
    budgets = [("dense", 0.0)] + [("unstructured", s) for s in ((0.9,) if args.quick else LEVELS)] + [("2:4", 0.5)]
    task = Task("cnn", steps)
    data = (task.x_tr, task.y_tr, task.x_te, task.y_te)
    rows = []
    t0 = time.perf_counter()
    for kind, s in budgets:
        kk = "unstructured" if kind == "dense" else kind
        methods = [("torchao PAT", None)] + ([("ours: Adam (dense)", "dense")] if kind == "dense" else
                                             [("ours: metric projection", "metric"), ("ours: Euclidean", "euclid")])
        for name, method in methods:
            res = []
            if method is None:
                for seed in range(seeds):
                    torch.manual_seed(seed)
                    res.append(pat_run(kind, s, task.init(seed)[0], task.order(seed), data, steps))
            else:
                program = task.program(method, kk, tx_fn=lambda s, method=method, kind=kind: ours_tx(
                    method, kind, s, steps))
                for seed in range(seeds):
                    p, acc, _ = program(*task.init(seed), task.order(seed), s)
                    st = structure(p, kk)
                    res.append(dict(acc=acc, sparsity=st["sparsity"],
                                    **({"pattern_holds": st["pattern_holds"]} if "pattern_holds" in st else {})))
            row = dict(budget=kind if kind != "unstructured" else f"{100 * s:g} %", method=name, runs=res,
                       acc_mean=float(np.mean([r["acc"] for r in res])), acc_std=float(np.std([r["acc"] for r in res])),
                       sparsity_mean=float(np.mean([r["sparsity"] for r in res])))
            if kind == "2:4":
                row["pattern_holds"] = all(r["pattern_holds"] for r in res)
            rows.append(row)
            print(f"[pat] {row['budget']} {name}: acc {100 * row['acc_mean']:.1f} ± {100 * row['acc_std']:.1f} %, "
                  f"sparsity {100 * row['sparsity_mean']:.2f} % ({time.perf_counter() - t0:.0f} s so far)", flush=True)
    lines = [f"SmallCNN on digits, {steps} steps, {seeds} seed(s), same initial weights and batches on both sides; "
             "test accuracy % (mean ± std), sparsity of the pruned kernels (conv 2 and the head):", "",
             "| budget | method | test acc % | sparsity % |", "|---|---|---|---|"]
    for r in rows:
        hold = "" if "pattern_holds" not in r else (" (2:4 holds)" if r["pattern_holds"] else " (2:4 violated)")
        lines.append(f"| {r['budget']} | {r['method']} | {100 * r['acc_mean']:.1f} ± {100 * r['acc_std']:.1f} | "
                     f"{100 * r['sparsity_mean']:.1f}{hold} |")
    table = "\n".join(lines)
    print("\n" + table)
    result = dict(benchmark="pat_side_by_side", quick=args.quick, seeds=seeds, steps=steps, lr=LR, batch=BATCH,
                  warmup=WARMUP, heal=HEAL, torch_version=torch.__version__, torchao_version=torchao.__version__,
                  jax_version=jax.__version__, rows=rows, table=table, wall_s=time.perf_counter() - t0)
    with open(os.path.join(args.out, "pat_side_by_side.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "pat_side_by_side.md"), "w") as f:
        f.write(table + "\n")
    return result


if __name__ == "__main__":
    main()
