"""Side by side: a PyTorch per-parameter Adam + ℓ½ prox loop (the style of the official ProxGen code) vs ours.

Both run proximal Adam with ``λ|θ|^½`` on the same parameter shapes (a ResNet-like list, ~0.7 M weights) from
the same initial weights, fed the same random "gradients" (no model: this isolates the optimizer step). The
PyTorch loop follows the authors' structure: a Python loop over parameters, in-place Adam moments, then the
closed-form ℓ½ prox of Xu et al. (2012) with the per-coordinate step ``α/(√v̂+δ)`` (``arccos``/``cos``).
Ours is ``proxgen_jax.proxgen_adam(..., Lq(0.5))`` under one ``jax.jit``. Reports median step time on CPU, the number of
coordinates whose zero/non-zero status differs and the max |difference| elsewhere (float32 vs float32).

Runs only when ``torch`` is importable (``pip install torch`` — not a dependency of proxgen_jax); otherwise it
prints a note, writes ``{"skipped": ...}`` and exits 0.

Usage::

    python benchmarks/pytorch_side_by_side.py --out benchmarks/results/pytorch [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np

SHAPES = ([(3, 3, 1, 32)] + [(3, 3, 32, 32)] * 4 + [(3, 3, 32, 64), (3, 3, 64, 64), (1, 1, 32, 64)]
          + [(3, 3, 64, 64)] * 2 + [(3, 3, 64, 128), (3, 3, 128, 128), (1, 1, 64, 128)] + [(3, 3, 128, 128)] * 2
          + [(128, 10)])


def torch_prox_lhalf(z, step, lam):
    """Xu et al. (2012) half-thresholding, per coordinate: prox of ``μ|x|^½ + (x−z)²/2`` with ``μ = step·λ``."""
    import torch
    mu = step * lam
    t = z.abs()
    thr = 1.5 * mu.pow(2.0 / 3.0)
    phi = torch.arccos(torch.clamp((3 ** 1.5 / 4) * mu * t.clamp_min(1e-30).pow(-1.5), -1.0, 1.0))
    x = (2.0 / 3.0) * z * (1 + torch.cos(2 * math.pi / 3 - (2.0 / 3.0) * phi))
    return torch.where(t > thr, x, torch.zeros_like(z))


class TorchProxAdam:
    """Per-parameter loop in the style of the official ProxGen optimizer (``torch.optim.Optimizer.step``)."""

    def __init__(self, params, lr, lam, betas=(0.9, 0.999), eps=1e-8):
        import torch
        self.params, self.lr, self.lam, self.betas, self.eps = params, lr, lam, betas, eps
        self.state = [{"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)} for p in params]

    def step(self, grads):
        import torch
        b1, b2 = self.betas
        with torch.no_grad():
            for p, g, st in zip(self.params, grads, self.state):
                st["step"] += 1
                bc1, bc2 = 1 - b1 ** st["step"], 1 - b2 ** st["step"]
                st["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (st["exp_avg_sq"].sqrt() / math.sqrt(bc2)).add_(self.eps)
                p.addcdiv_(st["exp_avg"], denom, value=-self.lr / bc1)
                p.copy_(torch_prox_lhalf(p, self.lr / denom, self.lam))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/pytorch")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    out_json = os.path.join(args.out, "pytorch_side_by_side.json")
    try:
        import torch
    except ImportError:
        msg = "torch is not importable: skipped (pip install torch to run this comparison)"
        print(msg)
        with open(out_json, "w") as f:
            json.dump({"skipped": msg}, f)
        return None
    import jax
    import jax.numpy as jnp
    import optax

    from proxgen_jax.aliases import proxgen_adam
    from proxgen_jax.regularizers import Lq

    torch.set_num_threads(1)
    steps = 10 if args.quick else 50
    lr, lam = 1e-3, 1e-3
    rng = np.random.default_rng(0)
    init = [(rng.normal(size=s) * (2.0 / np.prod(s[:-1])) ** 0.5).astype(np.float32) for s in SHAPES]
    grads = [[(rng.normal(size=s) * 1e-2).astype(np.float32) for s in SHAPES] for _ in range(steps)]
    n_params = int(sum(np.prod(s) for s in SHAPES))

    tparams = [torch.tensor(a.copy()) for a in init]
    topt = TorchProxAdam(tparams, lr, lam)
    tg = [[torch.tensor(g) for g in gs] for gs in grads]
    t_times = []
    for gs in tg:
        t = time.perf_counter()
        topt.step(gs)
        t_times.append(time.perf_counter() - t)

    tx = proxgen_adam(lr, Lq(0.5), lam)
    params = [jnp.asarray(a) for a in init]
    state = tx.init(params)

    @jax.jit
    def step(params, state, g):
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state

    jg = [[jnp.asarray(g) for g in gs] for gs in grads]
    t = time.perf_counter()
    jax.block_until_ready(step(params, state, jg[0]))
    compile_s = time.perf_counter() - t
    j_times = []
    for gs in jg:
        t = time.perf_counter()
        params, state = jax.block_until_ready(step(params, state, gs))
        j_times.append(time.perf_counter() - t)

    # ℓ½'s prox jumps at its threshold (0 vs (2/3)z): a coordinate within rounding of it may land on different
    # sides in the two float32 implementations, so compare the support and the values on the common support.
    pj = np.concatenate([np.asarray(p).ravel() for p in params])
    pt = np.concatenate([tp.numpy().ravel() for tp in tparams])
    same = (pj == 0) == (pt == 0)
    support_mismatch = int(np.sum(~same))
    diff = float(np.max(np.abs(pj[same] - pt[same])))
    zeros_t = sum(int((tp == 0).sum()) for tp in tparams) / n_params
    zeros_j = sum(int(jnp.sum(p == 0)) for p in params) / n_params
    res = {"n_params": n_params, "steps": steps, "torch_version": torch.__version__, "jax_version": jax.__version__,
           "torch_threads": 1, "torch_step_ms_median": 1e3 * float(np.median(t_times)),
           "jax_step_ms_median": 1e3 * float(np.median(j_times)), "jax_compile_s": compile_s,
           "max_abs_param_diff_common_support": diff, "support_mismatch": support_mismatch, "sparsity_torch": zeros_t,
           "sparsity_jax": zeros_j}
    with open(out_json, "w") as f:
        json.dump(res, f, indent=1)
    print(f"proximal Adam + ℓ½ on {n_params:,} params ({len(SHAPES)} tensors), {steps} steps, CPU")
    print("| implementation | median step ms | sparsity after | ")
    print("|---|---|---|")
    print(f"| PyTorch per-parameter loop (1 thread) | {res['torch_step_ms_median']:.2f} | {zeros_t:.4f} |")
    print(f"| proxgen_jax (jit) | {res['jax_step_ms_median']:.2f} | {zeros_j:.4f} |")
    print(f"after {steps} steps: zero patterns differ on {support_mismatch} of {n_params:,} coordinates; "
          f"max |θ_torch − θ_jax| elsewhere {diff:.2e}; jax compile {compile_s:.1f} s")
    return res


if __name__ == "__main__":
    main()
