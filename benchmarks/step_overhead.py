"""Step time of ``optax.chain(scale_by_adam_precond(), prox_*)`` ÷ ``optax.adam``, jitted, donated and not.

The parameter tree has ResNet-34's shapes (CIFAR-10 head, ~21.3M float32 parameters): conv kernels (h, w, in, out),
BatchNorm scales/biases, the final Dense. Two regimes, reported in this order:

* **donated** — ``jax.jit(step, donate_argnums=(0, 1))`` with the params and optimizer state threaded from one call
  to the next, as training loops run (XLA updates the buffers in place);
* **plain** — no donation, the same params and state fed to every call (every call allocates fresh outputs).

Each row times its own step and ``optax.adam``'s, both regimes, round-robin in the same rounds (median over rounds
of the per-round ratio), so machine noise hits both sides alike; the CPU-time ratio (process CPU seconds, all
threads) is steadier than wall time on a shared machine. Per row it also reports the compile time
(``jit(...).lower(...).compile()``) against ``optax.adam``'s, XLA's fusion count and bytes accessed of the donated
step (``compiled.cost_analysis()``), the optimizer-state bytes, and the minor page faults and kernel (system) CPU time
per step: on XLA:CPU every full-size temporary a step writes is a fresh allocation whose pages fault in again at
every call (~2 µs per 4 KiB page: ~1 ns per float32, more than Adam's whole step per parameter-sized temporary).
Targets (issue 19, donated): ℓ0, ℓ1 ≤ 1.05;
MCP, SCAD, binary q=1 ≤ 1.15; ℓ½, binary q=½ ≤ 1.35; ℓ⅔, ℓq ≤ 1.6; group ℓ1,2 ≤ 3.0; compile ≤ 2× Adam's; budgets
(issue 16) top-k per leaf (``prox_sparsity(0.9)``) and 2:4 ≤ 1.3, one global top-k over all kernels ≤ 2.0.

Usage:
  python benchmarks/step_overhead.py [--quick] [--out DIR] [--rounds N] [--only l1/2,l2/3] [--regimes donated]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import proxgen_jax as pg

REGIMES = ("donated", "plain")
CONTROL = "optax.adam (A/A)"
QUICK_ROWS = ("l1", "l1/2", "group-l12", "topk-0.9")  # --quick without --only: a smoke test of every code path


class LinkRow(NamedTuple):
    """A row whose prox link is not ``proximal_step(R)``: ``make(lr)`` returns the link (budgets, issue 16)."""

    make: Callable[[float], optax.GradientTransformation]


def _nm_kernels(params):
    """Kernels whose input axis (−2) is divisible by 4 (the stem's 3 input channels cannot be blocked)."""
    return jax.tree.map(lambda x: x.ndim >= 2 and x.shape[-2] % 4 == 0, params)
COMPILE_TARGET = 2.0


def resnet34_shapes(num_classes: int = 10, width: int = 64) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a CIFAR-style ResNet-34 (BasicBlocks [3, 4, 6, 3])."""
    shapes = {"stem/conv/kernel": (3, 3, 3, width), "stem/bn/scale": (width,), "stem/bn/bias": (width,)}
    cin = width
    for stage, (blocks, mult) in enumerate(zip((3, 4, 6, 3), (1, 2, 4, 8))):
        cout = width * mult
        for b in range(blocks):
            pre = f"stage{stage}/block{b}"
            shapes[f"{pre}/conv1/kernel"] = (3, 3, cin, cout)
            shapes[f"{pre}/bn1/scale"] = (cout,)
            shapes[f"{pre}/bn1/bias"] = (cout,)
            shapes[f"{pre}/conv2/kernel"] = (3, 3, cout, cout)
            shapes[f"{pre}/bn2/scale"] = (cout,)
            shapes[f"{pre}/bn2/bias"] = (cout,)
            if cin != cout:
                shapes[f"{pre}/shortcut/kernel"] = (1, 1, cin, cout)
            cin = cout
    shapes["head/kernel"] = (cin, num_classes)
    shapes["head/bias"] = (num_classes,)
    return shapes


def make_params(shapes, key):
    """Random float32 params of ``shapes`` (one jitted program: no eager compilation per shape)."""
    def build(key):
        return {name: 0.05 * jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32)
                for i, (name, shape) in enumerate(sorted(shapes.items()))}
    return jax.jit(build)(key)


@jax.jit
def fixed_grads(params):
    """Deterministic gradient-like values (spread signs and magnitudes, never all zero)."""
    return jax.tree.map(lambda p: 0.01 * jnp.sin(1000.0 * p) + 1e-4, params)


def regularizer_rows() -> list[tuple[str, object, dict]]:
    """(name, regularizer — or a per-leaf callable ``(path, leaf) -> Regularizer | None`` —, targets).

    ``targets`` maps a regime to the ratio it should meet: ``donated`` from issue 19, ``plain`` from issues 2/3.
    """
    R = pg.regularizers
    t = lambda donated, plain: {"donated": donated, "plain": plain}
    rows = [
        ("l0", R.L0(), t(1.05, 1.05)),
        ("l1", R.L1(), t(1.05, 1.05)),
        ("l1/2", R.Lq(0.5), t(1.35, 1.10)),
        ("l2/3", R.Lq(2 / 3), t(1.6, 1.10)),
        ("lq(q=0.3)", R.Lq(0.3), t(1.6, 1.10)),
        ("mcp", R.MCP(3.0), t(1.15, 1.10)),
        ("scad", R.SCAD(3.7), t(1.15, 1.10)),
        ("binary(q=1)", R.binary(1.0), t(1.15, 1.10)),
        ("binary(q=1/2)", R.binary(0.5), t(1.35, 1.10)),
    ]

    # Group ℓ1,2: one group per output filter / neuron of every conv and Dense kernel; 1-D leaves plain Adam.
    def group(path, leaf):
        axes = pg.output_unit_groups(path, leaf)
        return None if axes is None else R.GroupL12(group_axes=axes)

    rows.append(("group-l12", group, t(3.0, 1.30)))
    # Budgets (issue 16): exact top-k per leaf and over the whole tree (a bit-pattern selection, no sort of the
    # 21M scores), and 2:4 along the input axis; targets ≤ 1.3× (per leaf, N:M) and ≤ 2× (global), donated.
    kern = pg.kernels_only
    rows += [("topk-0.9", LinkRow(lambda lr: pg.prox_sparsity(0.9, lr, mask=kern)), t(1.3, 1.3)),
             ("topk-0.9-global", LinkRow(lambda lr: pg.prox_sparsity(0.9, lr, scope="global", mask=kern)), t(2.0, 2.0)),
             ("2:4", LinkRow(lambda lr: pg.prox_nm(2, 4, lr, mask=_nm_kernels)), t(1.3, 1.3))]
    return rows


def row_tx(reg, lr: float = 1e-3, lam: float = 1e-4) -> optax.GradientTransformation:
    """A row's optimizer: ProxGen's Adam preconditioner and the prox (``reg=None``: ``optax.adam`` itself)."""
    if reg is None:
        return optax.adam(lr)
    if isinstance(reg, LinkRow):
        return optax.chain(pg.scale_by_adam_precond(), reg.make(lr))
    return optax.chain(pg.scale_by_adam_precond(), pg.proximal_step(reg, lam, lr))


def tree_bytes(tree) -> int:
    return int(sum(np.dtype(x.dtype).itemsize * x.size for x in jax.tree.leaves(tree)))


def write_json(out_dir: str | None, name: str, result: dict) -> None:
    """``result`` as ``out_dir/name.json`` (nothing when ``out_dir`` is None)."""
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(result, f, indent=2)


def make_step(tx, *, donate: bool = False):
    """``jit((params, state, grads) -> (new params, new state))``; ``donate``: params and state donated."""
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state
    return jax.jit(step, donate_argnums=(0, 1) if donate else ())


def time_step(step, params, state, grads, reps: int) -> float:
    """Median seconds of ``reps`` calls of a non-donating ``step`` on the same inputs (after one warm call)."""
    out = step(params, state, grads)
    jax.block_until_ready(out)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = step(params, state, grads)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@jax.jit
def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


class Runner:
    """One jitted step and its inputs; ``run(reps)`` → (wall s, process CPU s) per call.

    Donated: the outputs of each call are the next call's inputs (the old buffers are consumed). Plain: the same
    inputs every call. Built from the state after one step, so the preconditioner is past ``C_1 = |g_1|``.
    ``step`` may be given (e.g. the executable :func:`compile_stats` compiled) to save a compilation.
    """

    def __init__(self, tx, params, grads, *, donate: bool, step=None):
        self.donate, self.grads = donate, grads
        self.step = step or make_step(tx, donate=donate)
        p = _copy(params) if donate else params  # donation consumes the buffers
        self.params, self.state = self.step(p, jax.jit(tx.init)(p), grads)
        jax.block_until_ready(self.run(1))

    def run(self, reps: int) -> tuple[float, float, float, float]:
        """(wall s, process CPU s, minor page faults, kernel CPU s) per call (faults and kernel time: the whole
        process, every thread)."""
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0, c0 = time.perf_counter(), time.process_time()
        p, s = self.params, self.state
        for _ in range(reps):
            out = self.step(p, s, self.grads)
            if self.donate:
                p, s = out
        jax.block_until_ready(out)
        if self.donate:
            self.params, self.state = p, s
        wall, cpu = (time.perf_counter() - t0) / reps, (time.process_time() - c0) / reps
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        return wall, cpu, (r1.ru_minflt - r0.ru_minflt) / reps, (r1.ru_stime - r0.ru_stime) / reps


def compile_stats(tx, params, grads, *, donate: bool = True) -> tuple[dict, object]:
    """Seconds to lower and compile a fresh jit of the step, XLA's view of the compiled program, and the
    executable itself (callable like the step)."""
    state = jax.eval_shape(tx.init, params)
    t0 = time.perf_counter()
    compiled = make_step(tx, donate=donate).lower(params, state, grads).compile()
    seconds = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
    text = compiled.as_text() or ""
    entry = text[text.find("\nENTRY"):] if "\nENTRY" in text else text
    return {"compile_s": seconds, "fusions": entry.count(" fusion("),
            "bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
            "flops": float(cost.get("flops", float("nan")))}, compiled


def median_ratio(a, b) -> float:
    return float(np.median(np.asarray(a) / np.asarray(b)))


def time_row(runners: dict, *, rounds: int, reps: int) -> dict:
    """``{regime: {...}}`` from ``runners = {regime: (ours, adam)}``, every step timed round-robin in each round."""
    order = [(regime, side) for regime in runners for side in (0, 1)]
    times = {key: [] for key in order}
    for r in range(rounds):
        for regime, side in (order if r % 2 == 0 else order[::-1]):
            times[regime, side].append(runners[regime][side].run(reps))
    out = {}
    for regime in runners:
        ours, base = np.asarray(times[regime, 0]), np.asarray(times[regime, 1])
        out[regime] = dict(ours_ms=1e3 * float(np.median(ours[:, 0])), adam_ms=1e3 * float(np.median(base[:, 0])),
                           ratio=median_ratio(ours[:, 0], base[:, 0]), cpu_ratio=median_ratio(ours[:, 1], base[:, 1]),
                           page_faults=float(np.median(ours[:, 2])), adam_page_faults=float(np.median(base[:, 2])),
                           kernel_ms=1e3 * float(np.median(ours[:, 3])),
                           adam_kernel_ms=1e3 * float(np.median(base[:, 3])))
    return out


def measure_rows(params, grads, rows, *, rounds: int, reps: int, regimes=REGIMES, lr: float = 1e-3,
                 lam: float = 1e-4, adam_compile_per_row: bool = True, log=print) -> list[dict]:
    """Every row of ``rows`` (``regularizer_rows()`` format) against ``optax.adam`` on ``params``: compile time
    and XLA's statistics of the donated step (each row's and, with ``adam_compile_per_row``, a fresh one of
    Adam's, so both see the same machine), then both regimes' steps timed round-robin. Adam's steps are shared
    by all rows."""
    adam = optax.adam(lr)
    adam_state = jax.eval_shape(adam.init, params)
    adam_runners = {}
    adam_stats, adam_compiled = compile_stats(adam, params, grads)
    out = []
    for i, (name, reg, targets) in enumerate(rows):
        tx = row_tx(reg, lr, lam)
        stats, compiled = compile_stats(tx, params, grads)
        if adam_compile_per_row and i > 0:
            adam_stats = compile_stats(adam, params, grads)[0]
        row = dict(regularizer=name, targets=targets, compile={"ours": stats, "adam": adam_stats})
        row["compile_ratio"] = stats["compile_s"] / adam_stats["compile_s"]
        row["bytes_ratio"] = stats["bytes_accessed"] / adam_stats["bytes_accessed"]
        runners = {}
        for regime in regimes:
            donate = regime == "donated"
            if regime not in adam_runners:
                adam_runners[regime] = Runner(adam, params, grads, donate=donate,
                                              step=adam_compiled if donate else None)
            runners[regime] = (Runner(tx, params, grads, donate=donate, step=compiled if donate else None),
                               adam_runners[regime])
        row.update(time_row(runners, rounds=rounds, reps=reps))
        del runners
        for regime in regimes:
            row[regime]["target"] = targets[regime]
            row[regime]["meets_target"] = row[regime]["ratio"] <= targets[regime]
        row.update(state_bytes=tree_bytes(jax.eval_shape(tx.init, params)), adam_state_bytes=tree_bytes(adam_state))
        row["state_bytes_ratio"] = row["state_bytes"] / row["adam_state_bytes"]
        log(f"[step_overhead] {name}: " + ", ".join(f"{g} {row[g]['ratio']:.3f} (cpu {row[g]['cpu_ratio']:.3f})"
                                                    for g in regimes)
            + f", compile {row['compile_ratio']:.2f}x", flush=True)
        out.append(row)
    return out


def tables(rows, regimes=REGIMES) -> str:
    """Markdown tables, the donated regime first."""
    lines = []
    for regime in regimes:
        title = ("Donated (`donate_argnums=(0, 1)`, state threaded through the calls)" if regime == "donated"
                 else "Not donated (same inputs every call, fresh outputs)")
        lines += ["", f"{title}:", ""]
        head = ("| regularizer | ours ms | adam ms | ratio | CPU-time ratio | target | page faults (adam) |"
                " kernel ms (adam) |")
        sep = "|---|---|---|---|---|---|---|---|"
        if regime == "donated":
            head += " compile s | adam compile s | compile ratio | fusions (adam) | bytes accessed ÷ adam's |"
            sep += "---|---|---|---|---|"
        else:
            head += " state bytes ÷ adam's |"
            sep += "---|"
        lines += [head, sep]
        for r in rows:
            g = r[regime]
            ok = "" if g["meets_target"] else " ✗"
            line = (f"| {r['regularizer']} | {g['ours_ms']:.2f} | {g['adam_ms']:.2f} | {g['ratio']:.3f}{ok} | "
                    f"{g['cpu_ratio']:.3f} | {g['target']:.2f} | {g['page_faults']:.0f} "
                    f"({g['adam_page_faults']:.0f}) | {g['kernel_ms']:.1f} ({g['adam_kernel_ms']:.1f}) |")
            if regime == "donated":
                c = r["compile"]
                line += (f" {c['ours']['compile_s']:.2f} | {c['adam']['compile_s']:.2f} | {r['compile_ratio']:.2f} |"
                         f" {c['ours']['fusions']} ({c['adam']['fusions']}) | {r['bytes_ratio']:.3f} |")
            else:
                line += f" {r['state_bytes_ratio']:.3f} |"
            lines.append(line)
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"ResNet-34 at width 16 (~1.3M params), 3 rounds, rows {', '.join(QUICK_ROWS)} unless --only")
    ap.add_argument("--out", default=None, help="directory for step_overhead.json")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--only", default=None, help="comma-separated row names to run (default: all)")
    ap.add_argument("--regimes", default=",".join(REGIMES), help="donated, plain or both (default), in that order")
    args = ap.parse_args(argv)

    width = 16 if args.quick else 64
    rounds = args.rounds or (3 if args.quick else 15)
    reps = 3 if args.quick else 5
    regimes = tuple(g for g in REGIMES if g in args.regimes.split(","))
    params = make_params(resnet34_shapes(width=width), jax.random.PRNGKey(0))
    grads = fixed_grads(params)
    n = sum(x.size for x in jax.tree.leaves(params))
    only = set(args.only.split(",")) if args.only else (set(QUICK_ROWS) if args.quick else None)
    rows = [row for row in regularizer_rows() if only is None or row[0] in only]
    if not args.quick and (only is None or CONTROL in only):  # A/A: optax.adam against itself shows the run's noise
        rows.insert(0, (CONTROL, None, {"donated": 1.05, "plain": 1.05}))
    print(f"ResNet-34-shaped tree: {n / 1e6:.2f}M float32 params, backend {jax.default_backend()}, "
          f"{os.cpu_count()} CPUs; median of {rounds} rounds x {reps} calls; regimes {', '.join(regimes)}", flush=True)
    rows = measure_rows(params, grads, rows, rounds=rounds, reps=reps, regimes=regimes,
                        adam_compile_per_row=not args.quick)
    print(tables(rows, regimes))

    result = dict(benchmark="step_overhead", quick=args.quick, params=int(n), backend=jax.default_backend(),
                  jax=jax.__version__, optax=optax.__version__, machine=platform.machine(), cpus=os.cpu_count(),
                  rounds=rounds, reps=reps, regimes=list(regimes), compile_target=COMPILE_TARGET, rows=rows)
    write_json(args.out, "step_overhead", result)
    return result


if __name__ == "__main__":
    main()
