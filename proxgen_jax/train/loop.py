"""The training loop: one run of (model, dataset, optimizer, regularizer, λ, seed) with per-epoch measurements.

The model is a Flax NNX module split into a pure parameter dict ``θ`` (the optax tree) and the rest (BatchNorm
statistics), so every optimizer here is an ordinary ``optax.GradientTransformation`` and ``kernels_only``
masks see clean paths (``['convs'][0]['kernel']``). BatchNorm runs on batch statistics in training and on
running averages at evaluation; the updated statistics are carried through the jitted step.

Per epoch it records the training loss, the objective ``F(θ) = f(θ) + λR(θ)`` on the full training set, test
accuracy (after the optimizer's evaluation map, e.g. hard quantisation for binary networks), the fraction of
exactly-zero regularised weights (and of zero output units for the group task), and the Theorem-1 diagnostics
of :mod:`proxgen_jax.train.diagnostics` per step.

With ``freeze_epoch = E`` (quantised training, ProxQuant's protocol) the run hard-quantises the regularised
weights after ``E`` epochs (the optimizer's evaluation map; λ ramps are compressed to end there), freezes them,
re-estimates the BatchNorm statistics for the quantised weights and spends the remaining epochs fine-tuning the
other parameters with Adam (:mod:`proxgen_jax.train.batchnorm`). ``history["freeze"]`` records the test accuracy
at that point with the training-time statistics, after the re-estimation alone, and the fraction of weights
already on a level before the rounding.

:func:`train_run` takes CLI names and returns the history only (what the command and the benchmarks store);
:func:`fit` trains with any ``optax.GradientTransformation`` and also returns the final parameters and the
model's logits (what the notebooks use).

Example:
  >>> from proxgen_jax.train.loop import RunConfig, train_run
  >>> from proxgen_jax.train.data import load_digits_split
  >>> hist = train_run(RunConfig(epochs=1), load_digits_split(), progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from proxgen_jax._tree import MaskOrFn, kernels_only, resolve_mask
from proxgen_jax.metrics import sparsity
from proxgen_jax.train.batchnorm import freeze_finetune_tx, make_batch_stats_fn, reestimate_batch_stats
from proxgen_jax.train.compile_clock import CompileClock
from proxgen_jax.train.data import Split, batches
from proxgen_jax.train.diagnostics import step_diagnostics, summarize
from proxgen_jax.train.models import make_model
from proxgen_jax.train.optimizers import OptimizerSpec, build_optimizer, regularizer_value

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
    freeze_epoch: int | None = None
    finetune_lr: float | None = None
    bits: int | None = None
    scale: str | None = None

    def label(self) -> str:
        """A short human-readable name: ``optimizer[regularizer]`` (+ λ)."""
        reg = f"q={self.q:g}" if self.task == "binary" else self.regularizer
        if self.task == "binary" and (self.bits or self.scale):
            reg += f",{self.bits or 1}b" + (f",{self.scale}" if self.scale else "")
        return f"{self.optimizer}[{reg}]" if self.optimizer != "adam" else "adam (no reg.)"


class TrainedRun(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      history: the per-epoch history of :func:`train_run` (JSON-serialisable).
      params: the final trainable tree ``θ`` (the latent weights for BinaryConnect; for ℓ0-hc
        ``{"params": θ, "gates": log α}``).
      opt_state: the final optimizer state.
      logits: ``(params, x) → logits`` of the model in evaluation mode (jitted; ``params`` shaped like ``θ``).
      evaluate: ``(params, x, y) → (mean cross-entropy, accuracy)`` over a whole set, in chunks.
      model_state: the model's non-trainable state at the end (BatchNorm statistics; a pure dict), what
        ``logits`` evaluates with — to rebuild the trained nnx module (e.g. for ``compact``).
    """

    history: dict
    params: Any
    opt_state: Any
    logits: Callable[[Any, Any], jax.Array]
    evaluate: Callable[[Any, Any, Any], tuple[float, float]]
    model_state: Any = None


def masked_values(params: Any, mask: MaskOrFn = None) -> np.ndarray:
    """The entries of the leaves selected by ``mask``, flattened and concatenated (NumPy; empty if none).

    Example:
      >>> import jax.numpy as jnp
      >>> masked_values({"a": {"kernel": jnp.ones((2, 2))}, "b": {"bias": jnp.zeros(3)}}, kernels_only).shape
      (4,)
    """
    flags = resolve_mask(mask, params)
    picked = [np.ravel(np.asarray(leaf)) for leaf, on in zip(jax.tree.leaves(params), flags) if on]
    return np.concatenate(picked) if picked else np.zeros((0,), np.float32)


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


def train_run(cfg: RunConfig, data: Split, *, progress: bool = True, spec: OptimizerSpec | None = None,
              log_state: Callable[[Any], dict] | None = None) -> dict:
    """Trains one run and returns its history (JSON-serialisable) — see the module docstring.

    Args:
      cfg: the run.
      data: ``(x_train, y_train, x_test, y_test)``.
      progress: show a tqdm bar.
      spec: the optimizer and its surroundings; default ``build_optimizer(cfg.optimizer, ...)``.
      log_state: ``opt_state → {name: scalar}`` recorded after every step in ``history["per_step"][name]``
        (e.g. the λ controller's ``λ_t`` from :func:`proxgen_jax.target_sparsity_info`); jit-traceable.
    """
    return _train(cfg, data, progress=progress, spec=spec, log_state=log_state).history


def fit(tx, data: Split, *, epochs: int = 10, model: str = "cnn", batch_size: int = 64, seed: int = 0,
        hidden: Sequence[int] = (64,), channels: Sequence[int] = (16, 32), regularizer: Any = None,
        lam: float = 0.0, mask: MaskOrFn = kernels_only, forward: Callable | None = None,
        finalize: Callable | None = None, log_state: Callable[[Any], dict] | None = None,
        progress: bool = False, freeze_epoch: int | None = None, finetune_lr: float | None = None) -> TrainedRun:
    """Trains a fresh ``model`` on ``data`` with the optax transformation ``tx``; the loop of :func:`train_run`.

    Per epoch the history records the mean minibatch loss, the objective ``F(θ) = f(θ) + λR(θ)`` on the whole
    training set (``f`` of the parameters used in the forward pass), the test accuracy of ``finalize(θ)``, the
    fraction of exactly-zero weights selected by ``mask`` (``sparsity``), of zero output units
    (``group_sparsity``) and of weights exactly at ±1 (``quantized_fraction``).

    Args:
      tx: any ``optax.GradientTransformation``; its ``update`` is called with the params.
      data: ``(x_train, y_train, x_test, y_test)``.
      epochs: passes over the training set (shuffled minibatches, the last partial one dropped).
      model: ``"mlp"``, ``"cnn"`` or ``"resnet"`` (:func:`proxgen_jax.train.models.make_model`).
      batch_size: minibatch size.
      seed: model initialisation and batch order.
      hidden: MLP hidden widths.
      channels: CNN / ResNet channels.
      regularizer: ``R`` (or a per-leaf callable) for ``F = f + λR``; ``None``: ``F = f``.
      lam: ``λ`` in ``F``.
      mask: the regularised leaves (for ``F`` and the sparsity columns).
      forward: params → params used in the forward pass (BinaryConnect: ``sign`` with a straight-through gradient).
      finalize: params → params evaluated on the test set (e.g. hard quantisation); default identity.
      log_state: ``opt_state → {name: scalar}`` recorded per step in ``history["per_step"]``.
      progress: show a tqdm bar.
      freeze_epoch: after this many epochs apply ``finalize``, freeze the ``mask`` leaves, re-estimate the
        BatchNorm statistics and fine-tune the other leaves for the remaining epochs (see the module docstring).
      finetune_lr: Adam's rate in the fine-tune phase (default ``3e-3``).

    Returns:
      A :class:`TrainedRun`.

    Example:
      >>> import optax, proxgen_jax as pg
      >>> from proxgen_jax.train.data import load_digits_split
      >>> run = fit(pg.proxgen_adam(3e-3, pg.Lq(0.5), 1e-3), load_digits_split(), epochs=1,
      ...           regularizer=pg.Lq(0.5), lam=1e-3)  # doctest: +SKIP
      >>> run.history["sparsity"][-1] > 0  # doctest: +SKIP
      True
    """
    cfg = RunConfig(model=model, optimizer="custom", epochs=int(epochs), batch_size=int(batch_size),
                    seed=int(seed), lam=float(lam), channels=tuple(channels), hidden=tuple(hidden),
                    diagnostics=False, freeze_epoch=freeze_epoch, finetune_lr=finetune_lr)
    spec = OptimizerSpec("custom", tx, regularizer, float(lam), mask, forward=forward, finalize=finalize)
    return _train(cfg, data, progress=progress, spec=spec, log_state=log_state)


def _train(cfg: RunConfig, data: Split, *, progress: bool, spec: OptimizerSpec | None,
           log_state: Callable[[Any], dict] | None) -> TrainedRun:
    x_tr, y_tr, x_te, y_te = data
    num_classes = int(max(y_tr.max(), y_te.max())) + 1
    steps_per_epoch = max(x_tr.shape[0] // cfg.batch_size, 1)
    total_steps = steps_per_epoch * cfg.epochs
    freeze = cfg.freeze_epoch
    if freeze is not None and not 1 <= int(freeze) <= cfg.epochs:
        raise ValueError(f"freeze_epoch must be in [1, epochs={cfg.epochs}], got {freeze!r}")
    if spec is None:  # λ ramps end where the weights are frozen
        spec = build_optimizer(cfg.optimizer, task=cfg.task, regularizer=cfg.regularizer, q=cfg.q, lam=cfg.lam,
                               lr=cfg.lr, total_steps=steps_per_epoch * (freeze or cfg.epochs), bits=cfg.bits,
                               scale=cfg.scale)
    if freeze is not None and spec.init_gates is not None:
        raise ValueError("freeze_epoch is not supported for gated (ℓ0-hc) runs")

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

    def make_train_step(tx, with_log):
        @jax.jit
        def train_step(trainable, rest, opt_state, x, y, key):
            grads, (loss, new_rest) = jax.grad(loss_fn, has_aux=True)(trainable, rest, x, y, key)
            updates, opt_state = tx.update(grads, opt_state, trainable)
            new_trainable = optax.apply_updates(trainable, updates)
            diag = step_diagnostics(trainable, new_trainable, grads, opt_state, cfg.lr) if cfg.diagnostics else {}
            if with_log and log_state is not None:
                diag = {**diag, **log_state(opt_state)}
            return new_trainable, new_rest, opt_state, loss, diag
        return train_step

    train_step = make_train_step(spec.tx, True)

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
        if spec.finalize_state is not None:  # e.g. snap to the learned scales in the optimizer state
            return spec.finalize_state(trainable, opt_state)
        return spec.finalize(trainable) if spec.finalize else trainable

    def _freeze(trainable, rest):
        """Hard quantisation, BatchNorm re-estimation and the fine-tune optimizer (ProxQuant's last phase)."""
        quantized = eval_params(trainable)
        bn_stats = make_batch_stats_fn(gdef_train)
        new_rest = reestimate_batch_stats(bn_stats, quantized, rest, x_tr, EVAL_CHUNK)
        info = {"epoch": int(freeze), "quantized_fraction": _quantized_fraction(trainable, spec.mask),
                "test_acc_latent": evaluate(model_params(trainable, None), rest, x_te, y_te)[1],
                "test_acc_train_stats": evaluate(quantized, rest, x_te, y_te)[1],
                "test_acc_bn_reestimated": evaluate(quantized, new_rest, x_te, y_te)[1]}
        tx = freeze_finetune_tx(cfg.finetune_lr or 3e-3, spec.mask)
        return quantized, new_rest, tx.init(quantized), info, tx

    trainable = params if gates is None else {"params": params, "gates": gates}
    hist: dict[str, Any] = {"config": dataclasses.asdict(cfg), "label": cfg.label(), "epoch": [], "train_loss": [],
                            "objective": [], "f_train": [], "test_acc": [], "sparsity": [], "group_sparsity": [],
                            "quantized_fraction": [],
                            "time_s": [], "compile_s": [], "train_s": [],
                            "per_step": {"step_norm": [], "grad_norm": [], "min_step": []}}
    rng = np.random.default_rng(cfg.seed)
    key = jax.random.key(cfg.seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total_steps, desc=cfg.label(), leave=False, dynamic_ncols=True)
    clock = CompileClock().__enter__()  # jit compilation, timed apart from training (closed after the loop)
    t0 = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        if freeze is not None and epoch == int(freeze) + 1:
            trainable, rest, opt_state, hist["freeze"], ft_tx = _freeze(trainable, rest)
            train_step = make_train_step(ft_tx, False)
        ep_losses, ep_diag = [], {k: [] for k in hist["per_step"]}
        for xb, yb in batches(x_tr, y_tr, cfg.batch_size, rng):
            key, sub = jax.random.split(key)
            trainable, rest, opt_state, loss, diag = train_step(trainable, rest, opt_state, jnp.asarray(xb),
                                                                jnp.asarray(yb), sub)
            ep_losses.append(loss)
            for k, v in diag.items():
                ep_diag.setdefault(k, []).append(v)
            if bar is not None:
                bar.update(1)
        for k, v in ep_diag.items():
            hist["per_step"].setdefault(k, []).extend(float(a) for a in jax.device_get(v))
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
        hist["compile_s"].append(clock.seconds)
        hist["train_s"].append(hist["time_s"][-1] - clock.seconds)
        if bar is not None:
            bar.set_postfix(loss=f"{hist['train_loss'][-1]:.3f}", acc=f"{acc:.3f}", sparsity=f"{sp:.3f}")
    clock.__exit__(None, None, None)
    if freeze is not None and int(freeze) == cfg.epochs:  # no fine-tune epochs: quantise, re-estimate, stop
        trainable, rest, opt_state, hist["freeze"], _ = _freeze(trainable, rest)
        hist["test_acc"][-1] = hist["freeze"]["test_acc_bn_reestimated"]
    if bar is not None:
        bar.close()
    hist["final"] = {"test_acc": hist["test_acc"][-1], "test_error": 1.0 - hist["test_acc"][-1],
                     "sparsity": hist["sparsity"][-1], "group_sparsity": hist["group_sparsity"][-1],
                     "quantized_fraction": hist["quantized_fraction"][-1],
                     "objective": hist["objective"][-1], "train_loss": hist["train_loss"][-1],
                     "time_s": hist["time_s"][-1], "compile_s": hist["compile_s"][-1],
                     "train_s": hist["train_s"][-1], "steps": total_steps}
    hist["conditions"] = summarize(hist["per_step"])
    return TrainedRun(hist, trainable, opt_state, lambda p, x: eval_logits(p, rest, jnp.asarray(x)),
                      lambda p, x, y: evaluate(p, rest, x, y), rest)
