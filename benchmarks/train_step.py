"""A whole training step — forward, backward, optimizer — with each ProxGen row ÷ ``optax.adam``, jitted and donated.

What a user feels: ``step_overhead.py`` times the optimizer alone, here the same rows run inside a training step.
Two networks from ``proxgen_jax.train.models``:

* ``resnet``: the small ResNet (stem16, two stages of one basic block, BatchNorm) on sklearn's 8×8 digits
  (``proxgen_jax.train.data``), batch 128;
* ``cifar``: a CIFAR-shaped conv net (``SmallCNN``, channels 32–64, 32×32×3 inputs, synthetic data), batch 32.

The step is ``jax.jit(step, donate_argnums=(0, 1, 2))`` over (params, BatchNorm statistics, optimizer state), the
outputs fed back as the next inputs; the prox regularises ``kernels_only`` (conv and Dense kernels), as in
training. Each row's step and ``optax.adam``'s run round-robin in the same rounds (median of per-round ratios;
process CPU time as a steadier second ratio on a shared machine). Targets (issue 19): ≤ 1.03 for the elementwise
rows, ≤ 1.10 for group ℓ1,2. Also the compile time of both steps.

Usage:
  python benchmarks/train_step.py [--quick] [--out DIR] [--rounds N] [--only l1,group-l12] [--nets resnet,cifar]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from step_overhead import LinkRow, _copy, median_ratio, regularizer_rows, write_json

import proxgen_jax as pg
from proxgen_jax.train.models import make_model

NETS = {"resnet": dict(batch=128), "cifar": dict(batch=32)}
QUICK_ROWS = ("l1", "group-l12")


def target(name: str) -> float:
    return 1.10 if name.startswith("group") else 1.03


class Problem(NamedTuple):
    """A network as pure data: ``loss_fn(params, rest, x, y) -> (loss, new_rest)`` and one batch."""

    name: str
    loss_fn: Callable
    params: Any
    rest: Any
    x: jax.Array
    y: jax.Array


def make_problem(net: str, batch: int | None = None, *, seed: int = 0) -> Problem:
    """``resnet`` (digits, 8×8×1) or ``cifar`` (synthetic 32×32×3) at ``batch`` (default: ``NETS``)."""
    batch = int(batch or NETS[net]["batch"])
    rng = np.random.default_rng(seed)
    if net == "resnet":
        from proxgen_jax.train.data import load_digits_split  # sklearn only when needed

        x_tr, y_tr = load_digits_split(seed)[:2]
        idx = rng.choice(x_tr.shape[0], batch, replace=batch > x_tr.shape[0])
        x, y = x_tr[idx], y_tr[idx]
        model = make_model("resnet", x.shape[1:], 10, seed=seed)
    elif net == "cifar":
        x = rng.standard_normal((batch, 32, 32, 3)).astype(np.float32)
        y = rng.integers(0, 10, batch).astype(np.int32)
        model = make_model("cnn", x.shape[1:], 10, seed=seed, channels=(32, 64))
    else:
        raise ValueError(f"net must be one of {sorted(NETS)}, got {net!r}")
    model.train()
    gdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, rest, x, y):
        m = nnx.merge(gdef, params, rest)
        loss = optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        return loss, nnx.to_pure_dict(nnx.split(m, nnx.Param, ...)[2])

    return Problem(net, loss_fn, nnx.to_pure_dict(params), nnx.to_pure_dict(rest), jnp.asarray(x), jnp.asarray(y))


def make_train_step(problem: Problem, tx, *, donate: bool = True):
    """``jit((params, rest, opt_state, x, y) -> (params, rest, opt_state, loss))``, donating the first three."""
    def step(params, rest, opt_state, x, y):
        grads, new_rest = jax.grad(problem.loss_fn, has_aux=True)(params, rest, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_rest, opt_state
    return jax.jit(step, donate_argnums=(0, 1, 2) if donate else ())


def row_tx(reg, lr: float = 1e-3, lam: float = 1e-4):
    """A row's optimizer with the prox on ``kernels_only`` (``reg=None``: ``optax.adam``)."""
    if reg is None:
        return optax.adam(lr)
    if isinstance(reg, LinkRow):  # a budget link (issue 16): its own mask
        return optax.chain(pg.scale_by_adam_precond(), reg.make(lr))
    return optax.chain(pg.scale_by_adam_precond(), pg.proximal_step(reg, lam, lr, mask=pg.kernels_only))


class TrainRunner:
    """A compiled, donated training step and its threaded carry; ``run(reps)`` → (wall s, CPU s) per step."""

    def __init__(self, problem: Problem, tx):
        self.problem = problem
        fn = make_train_step(problem, tx)
        params, rest = _copy((problem.params, problem.rest))  # donation consumes the buffers
        opt_state = jax.jit(tx.init)(params)
        t0 = time.perf_counter()
        self.step = fn.lower(params, rest, opt_state, problem.x, problem.y).compile()
        self.compile_s = time.perf_counter() - t0
        self.carry = self.step(params, rest, opt_state, problem.x, problem.y)
        jax.block_until_ready(self.run(1))

    def run(self, reps: int) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        carry = self.carry
        for _ in range(reps):
            carry = self.step(*carry, self.problem.x, self.problem.y)
        jax.block_until_ready(carry)
        self.carry = carry
        return (time.perf_counter() - t0) / reps, (time.process_time() - c0) / reps


def measure_net(problem: Problem, rows, *, rounds: int, reps: int, log=print) -> list[dict]:
    """Every row's training step against ``optax.adam``'s on ``problem``, round-robin in each round."""
    adam = TrainRunner(problem, row_tx(None))
    out = []
    for name, reg, _targets in rows:
        ours = TrainRunner(problem, row_tx(reg))
        times = {0: [], 1: []}
        for r in range(rounds):
            for side, runner in (((0, ours), (1, adam)) if r % 2 == 0 else ((1, adam), (0, ours))):
                times[side].append(runner.run(reps))
        a, b = np.asarray(times[0]), np.asarray(times[1])
        ratio = median_ratio(a[:, 0], b[:, 0])
        row = dict(net=problem.name, regularizer=name, ours_ms=1e3 * float(np.median(a[:, 0])),
                   adam_ms=1e3 * float(np.median(b[:, 0])), ratio=ratio, cpu_ratio=median_ratio(a[:, 1], b[:, 1]),
                   target=target(name), meets_target=ratio <= target(name), compile_s=ours.compile_s,
                   adam_compile_s=adam.compile_s)
        log(f"[train_step] {problem.name} {name}: {ratio:.3f} (cpu {row['cpu_ratio']:.3f})", flush=True)
        out.append(row)
        del ours
    return out


def table(rows) -> str:
    lines = ["| net | regularizer | ours ms | adam ms | ratio | CPU-time ratio | target | compile s | adam compile s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = "" if r["meets_target"] else " ✗"
        lines.append(f"| {r['net']} | {r['regularizer']} | {r['ours_ms']:.2f} | {r['adam_ms']:.2f} | "
                     f"{r['ratio']:.3f}{ok} | {r['cpu_ratio']:.3f} | {r['target']:.2f} | {r['compile_s']:.2f} | "
                     f"{r['adam_compile_s']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"2 rounds, rows {', '.join(QUICK_ROWS)} unless --only")
    ap.add_argument("--out", default=None, help="directory for train_step.json and train_step.md")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated row names (default: all)")
    ap.add_argument("--nets", default=",".join(NETS), help="comma-separated: resnet, cifar")
    args = ap.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 9)
    reps = 2 if args.quick else 5
    only = set(args.only.split(",")) if args.only else (set(QUICK_ROWS) if args.quick else None)
    rows = [row for row in regularizer_rows() if only is None or row[0] in only]
    if not args.quick and only is None:  # an A/A row: optax.adam against itself shows this run's noise
        rows.insert(0, ("optax.adam (A/A)", None, None))
    print(f"training step, donated; backend {jax.default_backend()}, {os.cpu_count()} CPUs; "
          f"median of {rounds} rounds x {reps} steps", flush=True)
    results = []
    for net in args.nets.split(","):
        problem = make_problem(net)
        n = sum(x.size for x in jax.tree.leaves(problem.params))
        print(f"[train_step] {net}: {n:,} params, batch {problem.x.shape[0]}, inputs {problem.x.shape[1:]}", flush=True)
        results += measure_net(problem, rows, rounds=rounds, reps=reps)
    md = table(results)
    print(md)
    result = dict(benchmark="train_step", quick=args.quick, backend=jax.default_backend(), jax=jax.__version__,
                  machine=platform.machine(), cpus=os.cpu_count(), rounds=rounds, reps=reps, rows=results)
    write_json(args.out, "train_step", result)
    if args.out:
        with open(os.path.join(args.out, "train_step.md"), "w") as f:
            f.write(md + "\n")
    return result


if __name__ == "__main__":
    main()
