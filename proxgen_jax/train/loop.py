"""The training loop: one run of (model, dataset, optimizer, regularizer, λ, seed) with per-epoch measurements.

The model is a Flax NNX module split into a pure parameter dict ``θ`` (the optax tree) and the rest (BatchNorm
statistics), so every optimizer here is an ordinary ``optax.GradientTransformation`` and ``kernels_only``
masks see clean paths (``['convs'][0]['kernel']``). BatchNorm runs on batch statistics in training and on
running averages at evaluation; the updated statistics are carried through the jitted step.

Per epoch it records the training loss, the objective ``F(θ) = f(θ) + λR(θ)`` on the full training set, test
accuracy (after the optimizer's evaluation map, e.g. hard quantisation for binary networks), the fraction of
exactly-zero regularised weights (and of zero output units for the group task), and the Theorem-1 diagnostics
of :mod:`proxgen_jax.train.diagnostics` per step.

Example:
  >>> from proxgen_jax.train.loop import RunConfig, train_run
  >>> from proxgen_jax.train.data import load_digits_split
  >>> hist = train_run(RunConfig(epochs=1), load_digits_split(), progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from proxgen_jax.metrics import sparsity
from proxgen_jax.train.data import Split, batches
from proxgen_jax.train.diagnostics import step_diagnostics, summarize
from proxgen_jax.train.models import make_model
from proxgen_jax.train.optimizers import OptimizerSpec, build_optimizer, regularizer_value
from proxgen_jax.transforms.masks import resolve_mask

EVAL_CHUNK = 1024


@dataclasses.dataclass
class RunConfig:
    """One training run. ``lam`` is ``λ`` (its final value for ramped binary methods); ``lr`` is ``α``."""

    task: str = "sparse"
    model: str = "cnn"
    dataset: str = "digits"
    regularizer: str = "lhalf"
    q: float = 0.5
    lam: float = 1e-3
    optimizer: str = "proxgen_adam"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    channels: Sequence[int] = (16, 32)
    hidden: Sequence[int] = (64,)
    diagnostics: bool = True

    def label(self) -> str:
        """A short human-readable name: ``optimizer[regularizer]`` (+ λ)."""
        reg = f"q={self.q:g}" if self.task == "binary" else self.regularizer
        return f"{self.optimizer}[{reg}]" if self.optimizer != "adam" else "adam (no reg.)"


def _masked_sparsity(params: Any, mask) -> float:
    return float(sparsity(params, mask)["total"])


def _quantized_fraction(params: Any, mask, levels=(-1.0, 1.0)) -> float:
    """Fraction of regularised weights already exactly on a quantisation level (before final rounding)."""
    flags = resolve_mask(mask, params)
    hits = total = 0
    for leaf, on in zip(jax.tree.leaves(params), flags):
        if on:
            a = np.asarray(leaf)
            hits += int(np.sum(np.isin(a, np.asarray(levels, a.dtype))))
            total += a.size
    return hits / max(total, 1)


def _group_sparsity(params: Any, mask) -> float:
    """Fraction of output units (last-axis slices) whose incoming weights are all exactly zero."""
    flags = resolve_mask(mask, params)
    zeros = total = 0
    for leaf, on in zip(jax.tree.leaves(params), flags):
        if on:
            a = np.asarray(leaf).reshape(-1, np.shape(leaf)[-1])
            zeros += int(np.sum(np.all(a == 0, axis=0)))
            total += a.shape[1]
    return zeros / max(total, 1)


def train_run(cfg: RunConfig, data: Split, *, progress: bool = True, spec: OptimizerSpec | None = None) -> dict:
    """Trains one run and returns its history (JSON-serialisable) — see the module docstring."""
    x_tr, y_tr, x_te, y_te = data
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    steps_per_epoch = max(x_tr.shape[0] // cfg.batch_size, 1)
    total_steps = steps_per_epoch * cfg.epochs
    if spec is None:
        spec = build_optimizer(cfg.optimizer, task=cfg.task, regularizer=cfg.regularizer, q=cfg.q, lam=cfg.lam,
                               lr=cfg.lr, total_steps=total_steps)

    model = make_model(cfg.model, x_tr.shape[1:], num_classes, seed=cfg.seed, hidden=cfg.hidden,
                       channels=cfg.channels)
    model.train()
    gdef_train, params_state, rest_state = nnx.split(model, nnx.Param, ...)
    model.eval()
    gdef_eval = nnx.split(model, nnx.Param, ...)[0]
    params = nnx.to_pure_dict(params_state)
    rest = nnx.to_pure_dict(rest_state)
    gates = spec.init_gates(params, jax.random.key(cfg.seed + 1000)) if spec.init_gates else None
    opt_state = spec.tx.init(params if gates is None else {"params": params, "gates": gates})

    def model_params(trainable, key):
        if gates is None:
            return spec.forward(trainable) if spec.forward else trainable
        return spec.gated_forward(trainable["params"], trainable["gates"], key)

    def loss_fn(trainable, rest, x, y, key):
        m = nnx.merge(gdef_train, model_params(trainable, key), rest)
        logits = m(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        new_rest = nnx.to_pure_dict(nnx.split(m, nnx.Param, ...)[2])
        extra = spec.gate_penalty(trainable["gates"]) if gates is not None else jnp.zeros([], jnp.float32)
        return loss + extra, (loss, new_rest)

    @jax.jit
    def train_step(trainable, rest, opt_state, x, y, key):
        grads, (loss, new_rest) = jax.grad(loss_fn, has_aux=True)(trainable, rest, x, y, key)
        updates, opt_state = spec.tx.update(grads, opt_state, trainable)
        new_trainable = optax.apply_updates(trainable, updates)
        diag = step_diagnostics(trainable, new_trainable, grads, opt_state, cfg.lr) if cfg.diagnostics else {}
        return new_trainable, new_rest, opt_state, loss, diag

    @jax.jit
    def eval_logits(p, rest, x):
        return nnx.merge(gdef_eval, p, rest)(x)

    def evaluate(p, rest, x, y):
        """Mean cross-entropy and accuracy over the whole set, in chunks."""
        losses, correct = [], 0
        for i in range(0, x.shape[0], EVAL_CHUNK):
            lg = eval_logits(p, rest, jnp.asarray(x[i:i + EVAL_CHUNK]))
            yy = jnp.asarray(y[i:i + EVAL_CHUNK])
            losses.append(float(optax.softmax_cross_entropy_with_integer_labels(lg, yy).sum()))
            correct += int(jnp.sum(jnp.argmax(lg, -1) == yy))
        return sum(losses) / x.shape[0], correct / x.shape[0]

    def eval_params(trainable):
        if gates is not None:
            return spec.gated_eval(trainable["params"], trainable["gates"])
        return spec.finalize(trainable) if spec.finalize else trainable

    trainable = params if gates is None else {"params": params, "gates": gates}
    hist: dict[str, Any] = {"config": dataclasses.asdict(cfg), "label": cfg.label(), "epoch": [], "train_loss": [],
                            "objective": [], "f_train": [], "test_acc": [], "sparsity": [], "group_sparsity": [],
                            "quantized_fraction": [],
                            "time_s": [], "per_step": {"step_norm": [], "grad_norm": [], "min_step": []}}
    rng = np.random.default_rng(cfg.seed)
    key = jax.random.key(cfg.seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps, desc=cfg.label(), leave=False, dynamic_ncols=True)
    t0 = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        ep_losses, ep_diag = [], {k: [] for k in hist["per_step"]}
        for xb, yb in batches(x_tr, y_tr, cfg.batch_size, rng):
            key, sub = jax.random.split(key)
            trainable, rest, opt_state, loss, diag = train_step(trainable, rest, opt_state, jnp.asarray(xb),
                                                                jnp.asarray(yb), sub)
            ep_losses.append(loss)
            for k, v in diag.items():
                ep_diag[k].append(v)
            if bar is not None:
                bar.update(1)
        for k, v in ep_diag.items():
            hist["per_step"][k].extend(float(a) for a in jax.device_get(v))
        # Objective F(θ) = f(θ) + λR(θ) on the full training set (the iterate θ itself, eval-mode BN).
        theta = trainable if gates is None else eval_params(trainable)
        f_train, _ = evaluate(model_params(theta, key) if (gates is None and spec.forward) else theta, rest,
                              x_tr, y_tr)
        reg_params = trainable if gates is None else theta
        objective = f_train + float(regularizer_value(reg_params, spec))
        _, acc = evaluate(eval_params(trainable), rest, x_te, y_te)
        sp = _masked_sparsity(eval_params(trainable) if gates is not None else trainable, spec.mask)
        gsp = _group_sparsity(eval_params(trainable) if gates is not None else trainable, spec.mask)
        hist["epoch"].append(epoch)
        hist["train_loss"].append(float(np.mean(jax.device_get(ep_losses))))
        hist["f_train"].append(f_train)
        hist["objective"].append(objective)
        hist["test_acc"].append(acc)
        hist["sparsity"].append(sp)
        hist["group_sparsity"].append(gsp)
        hist["quantized_fraction"].append(_quantized_fraction(trainable if gates is None else theta, spec.mask))
        hist["time_s"].append(time.perf_counter() - t0)
        if bar is not None:
            bar.set_postfix(loss=f"{hist['train_loss'][-1]:.3f}", acc=f"{acc:.3f}", sparsity=f"{sp:.3f}")
    if bar is not None:
        bar.close()
    hist["final"] = {"test_acc": hist["test_acc"][-1], "test_error": 1.0 - hist["test_acc"][-1],
                     "sparsity": hist["sparsity"][-1], "group_sparsity": hist["group_sparsity"][-1],
                     "quantized_fraction": hist["quantized_fraction"][-1],
                     "objective": hist["objective"][-1], "train_loss": hist["train_loss"][-1],
                     "time_s": hist["time_s"][-1], "steps": total_steps}
    hist["conditions"] = summarize(hist["per_step"])
    return hist
