"""One command for the day an accelerator is lent: step and train-step ratios, bandwidth, compile times, checks.

    python benchmarks/accelerator_suite.py [--size tiny|small|full] [--out DIR] [--budget-s 450]

Writes ``DIR/accelerator_suite.json`` (after every section, so a run cut short still leaves what it measured)
and prints a summary. Sections:

1. ``step``: the donated optimizer step (``jit(step, donate_argnums=(0, 1))``, params and state threaded) of every
   row of ``step_overhead.py`` ÷ ``optax.adam``, with compile times and XLA's fusion count / bytes accessed, on
   the ResNet-34 tree (21.3M params at ``full``) and on a ~1B-parameter transformer-shaped tree (sized down to
   the device's memory; a few million parameters at ``small``).
2. ``bandwidth``: bytes the step must move ÷ its time. Byte model, per parameter of the dtype's size: read θ, g,
   m, v and write θ, m, v — 7 arrays (a lower bound: XLA may re-read m and v it has just written). Against the
   device's peak HBM bandwidth where the table below knows the device, else null.
3. ``train_step``: ``train_step.py``'s whole training steps (small ResNet on digits at batch 128, CIFAR-shaped
   conv net at batch 32), every row ÷ ``optax.adam``.
4. ``checks``: ``device_checks.py`` on the device — brute-force prox samples per regularizer, Algorithm 1 against
   NumPy in float64, both ``lax.platform_dependent`` branches of the group prox, the float32 bit-level kernels.

``--size`` defaults to ``full`` off the CPU and ``small`` on it; ``tiny`` is the test suite's smoke run. Sections
that would start after ``--budget-s`` seconds are skipped (recorded as such). Needs jax with the device's plugin
(e.g. ``jax[cuda12]``), optax, flax; sklearn for the digits net (else that net is skipped).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import optax
from step_overhead import (
    fixed_grads,
    make_params,
    measure_rows,
    regularizer_rows,
    resnet34_shapes,
    write_json,
)

# Peak HBM bandwidth in GB/s by device_kind substring (first match wins; vendors' data sheets).
PEAK_GBPS = [
    ("GH200", 4000.0), ("H200", 4800.0), ("H100 PCIe", 2000.0), ("H100 NVL", 3900.0), ("H100", 3350.0),
    ("H800", 3350.0), ("B200", 8000.0), ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0),
    ("A100-PCIE-40GB", 1555.0), ("A100", 1555.0), ("L40S", 864.0), ("L4", 300.0), ("A10", 600.0),
    ("V100", 900.0), ("T4", 320.0), ("TPU v6 lite", 1640.0), ("TPU v5 lite", 819.0), ("TPU v5p", 2765.0),
    ("TPU v5", 2765.0), ("TPU v4", 1200.0),
]
SIZES = {  # ResNet-34 width (None: skipped), transformer (d, layers, vocab), rows, rounds × calls, check samples
    "tiny": dict(width=None, lm=(32, 1, 64), rows=("l1",), rounds=2, reps=2, samples=48,
                 nets={"cifar": 4}, train_rows=("l1",), algorithm1=("l1", "l2/3")),
    "small": dict(width=16, lm=(256, 4, 4096), rows=None, rounds=5, reps=3, samples=300,
                  nets={"resnet": 128, "cifar": 32}, train_rows=None, algorithm1=None),
    "full": dict(width=64, lm=(2048, 19, 32768), rows=None, rounds=9, reps=5, samples=300,
                 nets={"resnet": 128, "cifar": 32}, train_rows=None, algorithm1=None),
}


def lm_shapes(d: int, layers: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """A decoder-only transformer's parameter shapes: 12·d² per layer plus the embedding (d=2048, 19 layers,
    vocab 32768: 1.02B parameters)."""
    shapes = {"embed/embedding": (vocab, d), "final_norm/scale": (d,)}
    for i in range(layers):
        pre = f"layer{i:02d}"
        shapes.update({f"{pre}/norm1/scale": (d,), f"{pre}/attn/qkv/kernel": (d, 3 * d),
                       f"{pre}/attn/out/kernel": (d, d), f"{pre}/norm2/scale": (d,),
                       f"{pre}/mlp/up/kernel": (d, 4 * d), f"{pre}/mlp/down/kernel": (4 * d, d)})
    return shapes


def peak_gbps(device_kind: str) -> float | None:
    """Peak memory bandwidth (GB/s) of a device from :data:`PEAK_GBPS`, or None when unknown."""
    return next((gbps for key, gbps in PEAK_GBPS if key.lower() in device_kind.lower()), None)


def n_params(shapes) -> int:
    return int(sum(np.prod(s) for s in shapes.values()))


def device_info() -> dict:
    dev = jax.devices()[0]
    stats = {}
    try:
        stats = dev.memory_stats() or {}
    except Exception:
        pass
    kind = getattr(dev, "device_kind", "unknown")
    peak = peak_gbps(kind)
    return {"backend": jax.default_backend(), "device_kind": kind, "devices": len(jax.devices()),
            "memory_bytes": stats.get("bytes_limit"), "peak_gbps": None if dev.platform == "cpu" else peak,
            "jax": jax.__version__, "optax": optax.__version__, "machine": platform.machine(), "cpus": os.cpu_count()}


def fit_lm(lm, memory_bytes) -> tuple[int, int, int]:
    """Fewer layers until ~12 arrays of the tree fit in 70 % of the device memory (two steps' θ, m, v, and g)."""
    d, layers, vocab = lm
    if memory_bytes:
        while layers > 1 and 12 * 4 * n_params(lm_shapes(d, layers, vocab)) > 0.7 * memory_bytes:
            layers -= 1
    return d, layers, vocab


def step_section(shapes, cfg, peak_gbps, log) -> dict:
    """Donated step ratios of every row on ``shapes``, with the bandwidth each achieves."""
    params = make_params(shapes, jax.random.PRNGKey(0))
    grads = fixed_grads(params)
    n = n_params(shapes)
    rows = [r for r in regularizer_rows() if cfg["rows"] is None or r[0] in cfg["rows"]]
    measured = measure_rows(params, grads, rows, rounds=cfg["rounds"], reps=cfg["reps"], regimes=("donated",), log=log)
    bytes_model = 7 * 4 * n  # float32: read θ, g, m, v; write θ, m, v
    for r in measured:
        g = r["donated"]
        for side in ("ours", "adam"):
            gbps = bytes_model / (g[f"{side}_ms"] * 1e-3) / 1e9
            g[f"{side}_gbps"] = gbps
            g[f"{side}_fraction_of_peak"] = None if peak_gbps is None else gbps / peak_gbps
    del params, grads
    return {"params": n, "leaves": len(shapes), "bytes_model_per_step": bytes_model,
            "byte_model": "7 arrays x 4 B x params: read params, grads, mu, nu; write params, mu, nu", "rows": measured}


def train_section(cfg, log) -> dict:
    import train_step

    rows = [r for r in regularizer_rows() if cfg["train_rows"] is None or r[0] in cfg["train_rows"]]
    out = {}
    for net, batch in cfg["nets"].items():
        try:
            problem = train_step.make_problem(net, batch)
        except ImportError as e:  # the digits need scikit-learn
            out[net] = {"skipped": f"{type(e).__name__}: {e}"}
            continue
        out[net] = {"batch": batch, "params": int(sum(x.size for x in jax.tree.leaves(problem.params))),
                    "rows": train_step.measure_net(problem, rows, rounds=cfg["rounds"], reps=cfg["reps"], log=log)}
    return out


def summary(result) -> list[str]:
    lines = []
    for tree in ("step_resnet34", "step_1b"):
        sec = result["sections"].get(tree, {})
        for r in sec.get("rows", []):
            g = r["donated"]
            frac = g.get("ours_fraction_of_peak")
            lines.append(f"{tree:14s} {r['regularizer']:14s} ratio {g['ratio']:.3f}  ours {g['ours_ms']:.3f} ms "
                         f"({g['ours_gbps']:.0f} GB/s{'' if frac is None else f', {100 * frac:.0f} % of peak'})  "
                         f"compile {r['compile_ratio']:.2f}x")
    for net, sec in result["sections"].get("train_step", {}).items():
        for r in sec.get("rows", []) if isinstance(sec, dict) else []:
            lines.append(f"train {net:8s} {r['regularizer']:14s} ratio {r['ratio']:.3f}")
    checks = result["sections"].get("checks", {})
    if checks:
        lines.append("checks: " + ", ".join(f"{k} {'ok' if v.get('passed') else 'FAILED'}"
                                             for k, v in checks.items() if isinstance(v, dict)))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default=None, help="default: full off the CPU, small on it")
    ap.add_argument("--out", default="accelerator_suite_out", help="directory for accelerator_suite.json")
    ap.add_argument("--budget-s", type=float, default=450.0, help="no section starts after this many seconds")
    ap.add_argument("--sections", default="step_resnet34,step_1b,train_step,checks")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    info = device_info()
    size = args.size or ("small" if info["backend"] == "cpu" else "full")
    cfg = SIZES[size]
    lm = fit_lm(cfg["lm"], info["memory_bytes"])
    result = {"suite": "accelerator_suite", "size": size, "budget_s": args.budget_s, "device": info,
              "lm_tree": {"d": lm[0], "layers": lm[1], "vocab": lm[2]}, "sections": {}, "skipped": [], "errors": {}}

    def log(*a, **k):
        print(*a, **k)

    sections = {
        "step_resnet34": lambda: (step_section(resnet34_shapes(width=cfg["width"]), cfg, info["peak_gbps"], log)
                                  if cfg["width"] else {"skipped": f"size {size}"}),
        "step_1b": lambda: step_section(lm_shapes(*lm), cfg, info["peak_gbps"], log),
        "train_step": lambda: train_section(cfg, log),
        "checks": lambda: __import__("device_checks").run_all(samples=cfg["samples"],
                                                             algorithm1_names=cfg["algorithm1"], log=log),
    }
    for name in args.sections.split(","):
        if time.perf_counter() - t_start > args.budget_s:
            result["skipped"].append(name)
            continue
        t0 = time.perf_counter()
        log(f"[accelerator_suite] {name} ...", flush=True)
        try:
            result["sections"][name] = sections[name]()
        except Exception as e:
            result["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
            log(f"[accelerator_suite] {name} failed: {type(e).__name__}: {e}", flush=True)
        result.setdefault("seconds", {})[name] = time.perf_counter() - t0
        result["elapsed_s"] = time.perf_counter() - t_start
        write_json(args.out, "accelerator_suite", result)
    checks = result["sections"].get("checks")
    result["checks_passed"] = None if checks is None else bool(checks.get("passed"))
    result["elapsed_s"] = time.perf_counter() - t_start
    write_json(args.out, "accelerator_suite", result)
    print("\n".join(summary(result)))
    print(f"[accelerator_suite] {size} on {info['device_kind']} in {result['elapsed_s']:.0f} s -> "
          f"{os.path.join(args.out, 'accelerator_suite.json')}")
    return result


if __name__ == "__main__":
    jnp.zeros(1).block_until_ready()  # start the backend before the clock
    main()
