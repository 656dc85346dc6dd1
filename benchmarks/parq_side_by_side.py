"""Side by side with torchao's PARQ itself: the digits MLP at 2 bits per weight with per-channel levels.

Same data split, the same initial weights (our Flax MLP's, copied into ``torch.nn.Linear``), the same minibatch
order, batch 64, Adam with α = 3e-3, the same number of epochs. Both kernels are quantised per output channel;
biases stay full precision. Accuracy is on the test set after hard quantisation.

* **torchao PARQ** — ``QuantOptimizer(torch.optim.Adam, quantizer, ProxPARQ(anneal 0 → 90 % of the steps))``
  with ``quant_per_channel=True`` and PARQ's default ``quant_period=10``, for the quantizers ``UnifQuantizer``
  (PARQ's uniform 2-bit grid ``s·{±½, ±3/2}``, scale from ``min(b·mean|w|, max|w|)``) and ``LSBQuantizer``
  (least-squares binary bases); and ``ProxHardQuant`` (straight-through) with ``UnifQuantizer``. After training
  every quantised weight is snapped to its channel's PARQ levels (a no-op once PARQ's annealing has ended).
* **ours** — ``revised_proxquant(..., scale="channel")`` (the fit and the prox in Adam's metric) and the
  Euclidean fit after ``optax.scale_by_adam()`` (PARQ's least-squares rule, our implementation), both with
  ``uniform_levels(2)`` and a linear λ ramp (λ chosen on validation by ``benchmarks/quantization.py`` at 2 bits,
  read from its JSON when present).

Needs ``torch`` and ``torchao`` (``pip install proxgen_jax[torch]``); without them it writes
``{"skipped": reason}`` and exits 0.

Usage::

    python benchmarks/parq_side_by_side.py --out benchmarks/results/parq [--quick]

Writes ``OUT/parq_side_by_side.json`` and ``OUT/parq_side_by_side.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

LR = 3e-3
BITS = 2
BATCH = 64
#: (row, optimizer, λ when ``benchmarks/quantization.py`` has not chosen one at 2 bits)
OURS = [("ours: ProxGen (metric fit)", "revised_proxquant", 1e-2),
        ("ours: Euclidean fit (PARQ's rule)", "proxquant", 0.3)]
QUANT_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "quantization", "quantization.json")


def _our_lams(path):
    """λ per optimizer: the 2-bit choice of ``benchmarks/quantization.py`` (validation) when its JSON exists."""
    lams = {opt: lam for _, opt, lam in OURS}
    if path and os.path.exists(path):
        with open(path) as f:
            for r in json.load(f).get("rows", []):
                if r["bits"] == BITS and r["optimizer"] in lams:
                    lams[r["optimizer"]] = r["lam"]
    return lams


def _torch_available() -> str | None:
    try:
        import torch  # noqa: F401
        from torchao.prototype.parq.optim import ProxHardQuant, ProxPARQ, QuantOptimizer  # noqa: F401
        from torchao.prototype.parq.quant import LSBQuantizer, UnifQuantizer  # noqa: F401
    except Exception as err:  # noqa: BLE001  (ImportError, or a torch/torchao mismatch raising at import)
        return f"torch / torchao PARQ not importable: {type(err).__name__}: {err}"
    return None


def _initial_weights(seed, input_shape):
    """Our MLP's initial parameters (hidden layer and head) as NumPy arrays."""
    from flax import nnx

    from proxgen_jax.train.models import make_model
    model = make_model("mlp", input_shape, 10, seed=seed)
    p = nnx.to_pure_dict(nnx.split(model, nnx.Param, ...)[1])
    return [(np.asarray(p["hidden"][0]["kernel"]), np.asarray(p["hidden"][0]["bias"])),
            (np.asarray(p["head"]["kernel"]), np.asarray(p["head"]["bias"]))]


def _parq_run(quantizer_name, prox_name, seed, data, epochs):
    import torch
    from torchao.prototype.parq.optim import ProxHardQuant, ProxPARQ, QuantOptimizer
    from torchao.prototype.parq.quant import LSBQuantizer, UnifQuantizer

    from proxgen_jax.train.data import batches
    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = data
    layers = []
    for k, b in _initial_weights(seed, x_tr.shape[1:]):
        lin = torch.nn.Linear(k.shape[0], k.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(k.T.copy()))
            lin.bias.copy_(torch.from_numpy(b.copy()))
        layers.append(lin)
    model = torch.nn.Sequential(torch.nn.Flatten(), layers[0], torch.nn.ReLU(), layers[1])
    weights = [layers[0].weight, layers[1].weight]
    biases = [layers[0].bias, layers[1].bias]
    base = torch.optim.Adam([{"params": weights, "quant_bits": BITS}, {"params": biases}], lr=LR)
    steps = (x_tr.shape[0] // BATCH) * epochs
    prox = ProxPARQ(anneal_start=0, anneal_end=max(1, int(0.9 * steps))) if prox_name == "parq" else ProxHardQuant()
    quantizer = UnifQuantizer() if quantizer_name == "uniform" else LSBQuantizer()
    opt = QuantOptimizer(base, quantizer, prox, quant_per_channel=True)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for xb, yb in batches(x_tr, y_tr, BATCH, rng):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(np.asarray(xb))),
                                                     torch.from_numpy(np.asarray(yb)).long())
            loss.backward()
            opt.step()
    on_grid = []
    with torch.no_grad():
        for w in weights:  # snap every entry to the nearest of its channel's PARQ levels
            quants = opt.state[w]["quants"]
            idx = torch.argmin((w[:, :, None] - quants[:, None, :]).abs(), dim=-1)
            snapped = torch.gather(quants, 1, idx)
            on_grid.append(float((snapped == w).float().mean()))
            w.copy_(snapped)
        pred = model(torch.from_numpy(np.asarray(x_te))).argmax(-1).numpy()
    return {"test_acc": float(np.mean(pred == y_te)), "on_grid_before_snap": float(np.mean(on_grid))}


def _ours_run(opt, lam, seed, data, epochs):
    from proxgen_jax.train.loop import RunConfig, train_run
    cfg = RunConfig(task="binary", model="mlp", q=1.0, lam=lam, optimizer=opt, epochs=epochs, lr=LR, seed=seed,
                    diagnostics=False, bits=BITS, scale="channel", batch_size=BATCH)
    return {"test_acc": train_run(cfg, data, progress=False)["final"]["test_acc"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/parq")
    p.add_argument("--quick", action="store_true", help="2 epochs, 1 seed")
    p.add_argument("--epochs", type=int, default=None, help="default 30 (--quick 2)")
    p.add_argument("--seeds", type=int, default=None, help="default 3 (--quick 1)")
    p.add_argument("--lam-from", default=QUANT_JSON, help="quantization.json whose 2-bit λ choices to use")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "parq_side_by_side.json")
    reason = _torch_available()
    if reason is not None:
        print(f"[parq_side_by_side] skipped: {reason}")
        with open(path, "w") as f:
            json.dump({"skipped": reason}, f)
        return {"skipped": reason}
    import torch
    torch.set_num_threads(1)
    from proxgen_jax.train.data import load_digits_split
    epochs = args.epochs or (2 if args.quick else 30)
    seeds = args.seeds or (1 if args.quick else 3)
    rows_spec = [("torchao PARQ (UnifQuantizer, ProxPARQ)", ("parq", "uniform", "parq")),
                 ("torchao PARQ (LSBQuantizer, ProxPARQ)", ("parq", "lsbq", "parq")),
                 ("torchao STE (UnifQuantizer, ProxHardQuant)", ("parq", "uniform", "hard"))]
    lams = _our_lams(None if args.quick else args.lam_from)
    rows_spec += [(name, ("ours", opt, lams[opt])) for name, opt, _ in OURS]
    t0 = time.perf_counter()
    rows = []
    for name, (kind, a, b) in rows_spec:
        runs = []
        for seed in range(seeds):
            data = load_digits_split(seed=seed)
            runs.append(_parq_run(a, b, seed, data, epochs) if kind == "parq" else _ours_run(a, b, seed, data, epochs))
        acc = 100 * np.array([r["test_acc"] for r in runs])
        row = {"method": name, "lam": b if kind == "ours" else None, "acc_mean": float(acc.mean()),
               "acc_std": float(acc.std()), "accs": acc.tolist()}
        if kind == "parq":
            row["on_grid_before_snap"] = float(np.mean([r["on_grid_before_snap"] for r in runs]))
        rows.append(row)
        print(f"[run] {name}: {acc.mean():.1f} ± {acc.std():.1f} %", flush=True)
    import torchao
    lines = ["| method | test acc % after 2-bit quantisation | PARQ weights on its grid before snap |",
             "|---|---|---|"]
    lines += [f"| {r['method']} | {r['acc_mean']:.1f} ± {r['acc_std']:.1f} | "
              f"{100 * r['on_grid_before_snap']:.1f} % |" if "on_grid_before_snap" in r else
              f"| {r['method']} (λ = {r['lam']:g}) | {r['acc_mean']:.1f} ± {r['acc_std']:.1f} | |" for r in rows]
    lines += ["", (f"digits MLP (64-64-10), {epochs} epochs, {seeds} seed(s), per-channel levels, Adam α = {LR:g}; "
                   f"torch {torch.__version__}, torchao {torchao.__version__}.")]
    table = "\n".join(lines)
    result = {"epochs": epochs, "seeds": seeds, "bits": BITS, "rows": rows, "table": table,
              "torch": torch.__version__, "torchao": torchao.__version__, "wall_time_s": time.perf_counter() - t0}
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "parq_side_by_side.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return result


if __name__ == "__main__":
    main()
