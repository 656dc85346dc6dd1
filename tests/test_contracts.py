"""The contract battery: every public transformation and alias through the same optax contracts.

Modelled on optax's ``alias_test.py`` and ``contrib/_common_test.py``: one table of cases (``CASES``), one test
per contract, parametrised over every case the contract applies to. The contracts (house rules, README):

* ``jit``       — one trace and one XLA compilation for many steps with scheduled ``λ``/``α_t`` (no retrace on
                  step 2: state dtypes and weak types are stable); every ``count`` in the state counts the steps.
* ``inject``    — ``optax.inject_hyperparams`` with the case's ``static_args`` computes what the plain factory
                  computes; ``λ`` and ``α_t`` are state leaves, changed between steps without a retrace and
                  taking effect at once (checked against the plain factory built with the new value); without
                  the ``static_args`` it is refused loudly, never silently different.
* ``multisteps``— ``optax.MultiSteps``: zero updates while accumulating, then one step on the mean gradient.
* ``finite``    — a NaN gradient gives NaN parameters (never silent zeros); under ``optax.apply_if_finite`` the
                  NaN step is skipped: zero updates, parameters unchanged and finite, inner state unchanged,
                  and the next finite step continues the unguarded trajectory bit for bit.
* ``bf16``      — bfloat16 parameters stay bfloat16 (updates too), the state's dtypes do not drift, everything
                  stays finite, the loss decreases, and sparsifying cases produce exact zeros.
* ``vmap``      — a transformation built inside ``jax.vmap`` with a traced ``λ`` equals the unbatched runs.
* ``state``     — diagonal methods keep the same state leaves (shapes, dtypes, bytes) as their optax twin.
* ``params``    — ``update`` without ``params`` is a ``ValueError`` that says so.
* ``errors``    — each invalid hyperparameter raises ``ValueError`` at construction, naming the argument.

Individual test files keep their mathematics (oracles, brute force); the contract checks live here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import proxgen_jax as pg
from proxgen_jax.baselines import add_subgradient, clip_latent, prox_sgd, proxquant, subgradient_adam
from proxgen_jax.preconditioners import bias_factors, dense_factors

from compile_counter import count_compiles

ALL = frozenset({"jit", "inject", "multisteps", "finite", "bf16", "vmap", "state", "params", "errors"})
TracerBool = jax.errors.TracerBoolConversionError
LR = 0.05
HUGE_LAM = 1e3


# ----------------------------------------------------------------------------------------------- the problem
def problem(dtype=jnp.float32, kernel=(6, 4)):
    """Least squares ``‖x W + b − y‖²`` with a sparse teacher; 24 rows (3 micro-batches of 8)."""
    rng = np.random.default_rng(3)
    d_in, d_out = kernel
    params = {"dense": {"kernel": jnp.asarray(0.5 * rng.standard_normal(kernel), dtype),
                        "bias": jnp.asarray(0.1 * rng.standard_normal(d_out), dtype)}}
    w = rng.standard_normal(kernel) * (rng.random(kernel) < 0.4)
    x = rng.standard_normal((24, d_in))
    y = x @ w + 0.05 * rng.standard_normal((24, d_out))
    return params, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


def loss(p, x, y):
    p = jax.tree.map(lambda a: a.astype(jnp.float32), p)
    return jnp.mean((x @ p["dense"]["kernel"] + p["dense"]["bias"] - y) ** 2)


def kfac_stats(p, x, y):
    """Exact KFAC statistics of the linear layer: ``A = E[xxᵀ]``, ``G = E[δδᵀ]`` with ``δ = ∂ℓ/∂pred``."""
    p = jax.tree.map(lambda a: a.astype(jnp.float32), p)
    pred = x @ p["dense"]["kernel"] + p["dense"]["bias"]
    delta = jax.grad(lambda out: jnp.mean((out - y) ** 2))(pred) * x.shape[0]
    return {"kfac_stats": {"dense": {"kernel": dense_factors(x, delta), "bias": bias_factors(delta)}}}


# ----------------------------------------------------------------------------------------------- the table
@dataclasses.dataclass(frozen=True)
class Case:
    """One public transformation or alias and the contracts it is held to.

    Attributes:
      name: the test id.
      factory: the public factory.
      kwargs: its keyword arguments for the battery's problem (``LR``; a ``λ`` giving some exact zeros).
      wrap: what the factory's output is chained into (e.g. the preconditioner before a prox link).
      contracts: the contracts that apply (``ALL`` minus those that do not, each exception explained in a comment).
      lam: the name of the ``λ`` argument (``None``: the factory has none).
      schedules: the arguments replaced by optax schedules in the ``jit`` contract.
      static: ``static_args`` for ``optax.inject_hyperparams``; ``unstatic_error`` is raised without them.
      limit: the values regularised coordinates take at ``λ = huge_lam`` (``None``: none forced).
      sparsifies: the case's ``λ`` gives exact zeros in the kernel after a few steps.
      regularised: the leaves under ``params["dense"]`` that the regularizer acts on.
      state_like: the optax optimizer with the same state leaves (``state`` contract).
      invalid: ``(kwargs, argument name)`` pairs that must raise ``ValueError`` naming the argument.
      extra: ``(params, x, y) -> dict`` of extra ``update`` keyword arguments (KFAC statistics).
      huge_lam: a ``λ`` that forces every regularised coordinate to ``limit`` in one step.
      tol: ``(rtol, atol)`` between two programs computing the same step (``multisteps``, ``vmap``).
      kernel: the shape of the problem's kernel.
      extra_scalars: names of the scalar state fields kept beyond the optax twin's (``state`` contract).
      budget_zeros: the case's zeros come from a budget, not from ``λ``: it keeps them at ``λ = 0``.
    """

    name: str
    factory: Callable[..., optax.GradientTransformation]
    kwargs: dict
    wrap: Callable[[optax.GradientTransformation], optax.GradientTransformation] = lambda tx: tx
    contracts: frozenset = ALL
    lam: str | None = "lam"
    schedules: tuple[str, ...] = ("lam", "learning_rate")
    static: tuple[str, ...] = ()
    unstatic_error: type | tuple[type, ...] | None = None
    limit: tuple[float, ...] | None = (0.0,)
    sparsifies: bool = True
    regularised: tuple[str, ...] = ("kernel", "bias")
    state_like: Callable[[], optax.GradientTransformation] | None = lambda: optax.adam(LR)
    invalid: tuple[tuple[dict, str], ...] = ()
    extra: Callable[..., dict] | None = None
    huge_lam: float = HUGE_LAM
    tol: tuple[float, float] = (1e-6, 1e-7)
    kernel: tuple[int, int] = (6, 4)
    extra_scalars: tuple[str, ...] = ()
    budget_zeros: bool = False


def after_adam(tx):
    return optax.chain(pg.scale_by_adam_precond(), tx)


PROX_ERRORS = (({"lam": -1.0}, "lam"), ({"lam": float("nan")}, "lam"), ({"learning_rate": 0.0}, "learning_rate"),
               ({"learning_rate": -1e-3}, "learning_rate"))
# Integer options of the inner metric solver choose code paths (loop lengths, sizes): static under inject_hyperparams.
METRIC_INTS = ("inner_steps", "polish_max_size", "polish_sweeps", "search_max_size")
# The coordinate-descent polish and the support search (tested in test_prox_metric.py) triple the compile time of a
# metric step on these small leaves; the contracts do not depend on them. proxgen_kfac has no switch: its kernel is
# made larger than POLISH_MAX_SIZE = 64 and its bias is not regularised.
NO_POLISH = dict(polish_max_size=0, search_max_size=0)
# Two XLA programs computing one metric step (jit vs vmap, MultiSteps vs plain) differ after the float32 eigh and
# the inner solver by up to 6e-4 relative, 1e-3 absolute (measured, 3 steps); the diagonal cases agree to 1e-6.
METRIC_TOL = (2e-3, 2e-3)
TARGET_SPARSITY_SCALARS = ("count", "log_lam", "integral", "sparsity", "target", "guard_steps", "peak_excess")
per_leaf_lq = lambda path, leaf: pg.Lq(0.5) if leaf.ndim == 2 else None  # noqa: E731

CASES = [
    Case("prox_l0", pg.prox_l0, dict(lam=0.03, learning_rate=LR), after_adam, invalid=PROX_ERRORS),
    Case("prox_l1", pg.prox_l1, dict(lam=0.1, learning_rate=LR), after_adam, invalid=PROX_ERRORS),
    Case("prox_lq_1/2", pg.prox_lq, dict(q=0.5, lam=0.03, learning_rate=LR), after_adam, static=("q",),
         unstatic_error=TracerBool, invalid=PROX_ERRORS + (({"q": 1.5}, "q"), ({"q": -0.1}, "q"))),
    Case("prox_lq_2/3", pg.prox_lq, dict(q=2 / 3, lam=0.03, learning_rate=LR), after_adam, static=("q",),
         unstatic_error=TracerBool),
    Case("prox_lq_0.3", pg.prox_lq, dict(q=0.3, lam=0.03, learning_rate=LR), after_adam, static=("q",),
         unstatic_error=TracerBool),
    # From test_sweeps: a callable mask is not a schedule, it must be static.
    Case("prox_lq_masked", pg.prox_lq, dict(q=0.5, lam=0.03, learning_rate=LR, mask=pg.kernels_only), after_adam,
         static=("q", "mask"), unstatic_error=ValueError, regularised=("kernel",)),
    Case("prox_mcp", pg.prox_mcp, dict(lam=0.1, learning_rate=LR, gamma=3.0), after_adam,
         invalid=PROX_ERRORS + (({"gamma": 0.0}, "gamma"),)),
    Case("prox_scad", pg.prox_scad, dict(lam=0.1, learning_rate=LR, gamma=3.7), after_adam,
         invalid=PROX_ERRORS + (({"gamma": 1.0}, "gamma"),)),
    Case("prox_binary", pg.prox_binary, dict(q=0.5, lam=0.1, learning_rate=LR), after_adam, static=("q",),
         unstatic_error=TracerBool, limit=(-1.0, 1.0), sparsifies=False,
         invalid=PROX_ERRORS + (({"q": 2.0}, "q"),)),
    Case("prox_quantize", pg.prox_quantize, dict(levels=(-1.0, 0.0, 1.0), q=0.5, lam=0.03, learning_rate=LR),
         after_adam, static=("q",), unstatic_error=TracerBool, limit=(-1.0, 0.0, 1.0),
         invalid=PROX_ERRORS + (({"levels": (1.0, 1.0)}, "levels"),)),
    # Learned per-channel scales: the state is Adam's plus one float32 scale per channel (test_learned_scales.py
    # checks the bytes), so no optax twin for ``state``; λ huge puts coordinates on s·ℓ, no fixed ``limit``; an
    # injected (traced) ``channel_axis`` is refused with the ValueError naming it.
    Case("prox_quantize_channel", pg.prox_quantize,
         dict(levels=(-1.0, 0.0, 1.0), q=0.5, lam=0.03, learning_rate=LR, scale="channel", channel_axis=-1),
         after_adam, contracts=ALL - {"state"}, static=("q", "scale", "channel_axis"), unstatic_error=ValueError,
         limit=None, sparsifies=False,
         invalid=PROX_ERRORS + (({"levels": (1.0, 1.0)}, "levels"), ({"scale": "row"}, "scale"))),
    Case("prox_group_l12", pg.prox_group_l12, dict(lam=1.0, learning_rate=LR, group_axes=pg.input_feature_groups),
         after_adam, static=("group_axes",), unstatic_error=TypeError, regularised=("kernel",),
         invalid=PROX_ERRORS + (({"weighting": "nope"}, "weighting"), ({"newton_steps": -1}, "newton_steps"))),
    Case("prox_group_mcp", pg.prox_group_mcp, dict(lam=1.0, learning_rate=LR, group_axes=pg.input_feature_groups),
         after_adam, static=("group_axes",), unstatic_error=TypeError, regularised=("kernel",),
         invalid=PROX_ERRORS + (({"gamma": 0.0}, "gamma"), ({"gamma": -1.0}, "gamma"),
                               ({"gamma": float("nan")}, "gamma"), ({"weighting": "nope"}, "weighting"),
                               ({"newton_steps": -1}, "newton_steps"))),
    Case("proximal_step", pg.proximal_step, dict(regularizer=pg.L1(), lam=0.1, learning_rate=LR), after_adam,
         invalid=PROX_ERRORS),
    # From test_sweeps: a per-leaf regularizer is a callable, not a schedule: static.
    Case("proximal_step_per_leaf", pg.proximal_step, dict(regularizer=per_leaf_lq, lam=0.03, learning_rate=LR),
         after_adam, static=("regularizer",), unstatic_error=TypeError, regularised=("kernel",)),
    Case("proximal_step_metric_adam", pg.proximal_step_metric,
         dict(regularizer=pg.L1(), lam=0.1, learning_rate=LR, **NO_POLISH),
         after_adam, static=METRIC_INTS, unstatic_error=ValueError, extra_scalars=("count", "inner_iterations"),
         invalid=PROX_ERRORS + (
             ({"inner_steps": 0}, "inner_steps"), ({"warm_start": "zeros"}, "warm_start"), ({"tol": -1.0}, "tol"),
             ({"polish_max_size": -1}, "polish_max_size"), ({"polish_sweeps": 0}, "polish_sweeps"),
             ({"search_max_size": 21}, "search_max_size"))),
    # Full-matrix and KFAC metrics are dense or Kronecker: no optax twin with the same state.
    Case("proximal_step_metric_full_matrix", pg.proximal_step_metric,
         dict(regularizer=pg.L1(), lam=0.3, learning_rate=LR, **NO_POLISH),
         lambda tx: optax.chain(pg.scale_by_full_matrix_precond(b2=0.99, eps=0.1), tx), contracts=ALL - {"state"},
         static=METRIC_INTS, unstatic_error=ValueError, tol=METRIC_TOL),
    # KFAC's metric is ~100x larger on this problem (G = E[δδᵀ]): λ and the huge λ scale with it.
    Case("proximal_step_metric_kfac", pg.proximal_step_metric,
         dict(regularizer=pg.L1(), lam=100.0, learning_rate=LR, **NO_POLISH),
         lambda tx: optax.chain(pg.scale_by_kfac_precond(damping=1e-2, update_every=1, warmup=0), tx),
         contracts=ALL - {"state"}, extra=kfac_stats, huge_lam=1e5, static=METRIC_INTS, unstatic_error=ValueError,
         tol=METRIC_TOL),
    # target_sparsity sets λ itself (no λ argument); its controller keeps a few scalars beyond Adam's state.
    Case("target_sparsity", pg.target_sparsity, dict(regularizer=pg.L1(), target=0.5, ramp_steps=4,
                                                     learning_rate=LR), after_adam, lam=None,
         schedules=("learning_rate",),
         static=("regularizer", "target", "ramp_steps", "ramp_begin", "guard_iters", "lam_init", "lam_min", "lam_max"),
         unstatic_error=ValueError, limit=None, extra_scalars=TARGET_SPARSITY_SCALARS,
         sparsifies=False,  # λ starts at lam_init = 1e-4 and the target ramps from 0: no zeros at step 1
         invalid=(({"target": 1.0}, "target"), ({"target": -0.1}, "target"), ({"ramp_steps": -1}, "ramp_steps"),
                  ({"ramp_steps": 2.5}, "ramp_steps"), ({"lam_init": 0.0}, "lam_init"),
                  ({"lam_init": 1e5}, "lam_init"), ({"learning_rate": -1.0}, "learning_rate"),
                  ({"gain_i": 0.0}, "gain_i"), ({"gain_p": -1.0}, "gain_p"), ({"down_factor": 0.5}, "down_factor"),
                  ({"margin": -0.01}, "margin"), ({"track": "both"}, "track"), ({"guard_iters": 0}, "guard_iters"),
                  ({"ramp_shape": "exp"}, "ramp_shape"))),
    # ------------------------------------------------------------------------------------------ budgets
    # A budget keeps a step count beside Adam's (the sparsity schedule and the support freeze read it).
    Case("prox_sparsity", pg.prox_sparsity,
         dict(sparsity=0.5, learning_rate=LR, regularizer=pg.L1(), lam=0.01, mask=pg.kernels_only),
         after_adam, static=("mask", "regularizer"), unstatic_error=ValueError, regularised=("kernel",),
         extra_scalars=("count",), budget_zeros=True,
         invalid=PROX_ERRORS + (({"sparsity": 1.5}, "sparsity"), ({"scope": "layer"}, "scope"),
                               ({"regularizer": "l1"}, "regularizer"), ({"freeze_after": -1}, "freeze_after"),
                               ({"weight_decay": -1.0}, "weight_decay"))),
    Case("prox_sparsity_global_groups", pg.prox_sparsity,
         dict(sparsity=0.5, learning_rate=LR, scope="global", group_axes=pg.input_feature_groups,
              regularizer=pg.L1(), lam=0.01),
         after_adam, static=("scope", "group_axes", "regularizer"), unstatic_error=(ValueError, TypeError),
         regularised=("kernel",), extra_scalars=("count",), budget_zeros=True),
    Case("prox_nm", pg.prox_nm, dict(n=2, m=4, learning_rate=LR, regularizer=pg.L1(), lam=0.01), after_adam,
         static=("n", "m"), unstatic_error=ValueError, regularised=("kernel",), kernel=(8, 4),
         extra_scalars=("count",), budget_zeros=True,
         invalid=PROX_ERRORS + (({"n": 0}, "n"), ({"n": 5}, "n"), ({"m": 2.0}, "m"),
                               ({"regularizer": pg.GroupL12()}, "regularizer"))),
    # Low rank: zeros are whole singular values, not entries (no `sparsifies`); 1-D leaves are left alone; the
    # metric prox is an iterative solver (two programs agree to METRIC_TOL).
    Case("prox_nuclear", pg.prox_nuclear, dict(lam=0.1, learning_rate=LR), after_adam, static=("tol", "max_iters"),
         unstatic_error=ValueError, regularised=("kernel",), sparsifies=False, tol=METRIC_TOL,
         invalid=PROX_ERRORS + (({"tol": 0.0}, "tol"), ({"max_iters": 0}, "max_iters"),
                               ({"matricize": "rows"}, "matricize"))),
    # ------------------------------------------------------------------------------------------ aliases
    Case("proxgen_adam", pg.proxgen_adam, dict(learning_rate=LR, regularizer=pg.L1(), lam=0.1),
         invalid=(({"b1": 1.0}, "b1"), ({"b2": -0.1}, "b2"), ({"eps": -1e-8}, "eps"), ({"lam": -1.0}, "lam"))),
    Case("proxgen_adam_masked", pg.proxgen_adam,
         dict(learning_rate=LR, regularizer=pg.Lq(0.5), lam=0.03, mask=pg.kernels_only), static=("mask",),
         unstatic_error=ValueError, regularised=("kernel",)),
    Case("proxgen_rmsprop", pg.proxgen_rmsprop, dict(learning_rate=LR, regularizer=pg.L1(), lam=0.03, momentum=0.5),
         state_like=lambda: optax.rmsprop(LR, momentum=0.5), invalid=(({"decay": 1.5}, "decay"),)),
    Case("proxgen_adagrad", pg.proxgen_adagrad,
         dict(learning_rate=LR, regularizer=pg.L1(), lam=1.0, momentum=0.5),
         state_like=lambda: optax.chain(optax.adagrad(LR), optax.trace(0.5)), invalid=(({"eps": -1.0}, "eps"),)),
    Case("proxgen_sgd", pg.proxgen_sgd, dict(learning_rate=LR, regularizer=pg.L1(), lam=1.0),
         state_like=lambda: optax.sgd(LR, momentum=0.9), invalid=(({"momentum": 1.0}, "momentum"),)),
    Case("proxgen_kfac", pg.proxgen_kfac, dict(learning_rate=LR, regularizer=pg.L1(), lam=100.0, update_every=1,
                                               damping=1e-2, mask=pg.kernels_only), kernel=(12, 8),
         regularised=("kernel",),
         contracts=ALL - {"state"}, extra=kfac_stats, huge_lam=1e5,
         static=("update_every", "inner_steps", "momentum", "mask"),
         unstatic_error=(ValueError, TracerBool), tol=METRIC_TOL,
         invalid=(({"momentum": 1.0}, "momentum"), ({"decay": -0.1}, "decay"), ({"damping": 0.0}, "damping"),
                  ({"update_every": 0}, "update_every"), ({"inner_steps": 0}, "inner_steps"))),
    Case("revised_proxquant", pg.revised_proxquant, dict(learning_rate=LR, q=0.5, lam=1e-3), static=("q",),
         unstatic_error=TracerBool, limit=(-1.0, 1.0), sparsifies=False),
    # ------------------------------------------------------------------------------------------ baselines
    # Subgradient training and Prox-SGD never create exact zeros (the point of the comparison).
    Case("subgradient_adam", subgradient_adam, dict(learning_rate=LR, regularizer=pg.Lq(0.5), lam=1e-2),
         limit=None, sparsifies=False,
         invalid=(({"learning_rate": 0.0}, "learning_rate"), ({"lam": -1.0}, "lam"), ({"b2": 1.0}, "b2"))),
    Case("add_subgradient", add_subgradient, dict(regularizer=pg.L1(), lam=1e-2),
         lambda tx: optax.chain(tx, optax.adam(LR)), schedules=("lam",), limit=None, sparsifies=False,
         invalid=(({"lam": -1.0}, "lam"),)),
    Case("prox_sgd", prox_sgd, dict(lam=1e-2), schedules=("lam",), limit=None, sparsifies=False,
         invalid=(({"eps0": 0.0}, "eps0"), ({"rho0": 1.5}, "rho0"), ({"beta": 1.0}, "beta"), ({"delta": 0.0}, "delta"),
                  ({"box": (1.0, -1.0)}, "box"), ({"a": -1.0}, "a"), ({"lam": -1.0}, "lam"))),
    # ProxQuant ramps λ from 0 (so step 1 is plain Adam): no zeros forced at step 1.
    Case("proxquant", proxquant, dict(learning_rate=LR, lam_max=1.0, ramp_steps=2), lam="lam_max",
         schedules=("learning_rate",), static=("ramp_steps", "ramp_every", "q"),
         unstatic_error=(TracerBool, jax.errors.ConcretizationTypeError),
         limit=None, sparsifies=False, extra_scalars=("count",),  # the λ ramp is a schedule: the prox counts steps
         invalid=(({"learning_rate": 0.0}, "learning_rate"), ({"lam_max": -1.0}, "lam_max"),
                  ({"levels": (0.0, 1.0)}, "clip=True"))),
    Case("clip_latent", clip_latent, dict(bound=1.0), lambda tx: optax.chain(optax.adam(LR), tx), lam=None,
         schedules=(), limit=None, sparsifies=False, invalid=(({"bound": 0.0}, "bound"),)),
    # ------------------------------------------------------------------------------------------------------
    # NEW ROWS GO HERE: one Case per new public transformation or alias (budgets: prox_sparsity, prox_nm;
    # learned-scale quantization; ...). Start from the closest row above; drop a contract from `contracts`
    # only with a comment saying why it cannot apply.
    # ------------------------------------------------------------------------------------------------------
]

# Preconditioners are not Cases (their output only feeds a prox link), but their ValueErrors are contracts too.
PRECONDITIONER_ERRORS = [
    (pg.scale_by_adam_precond, {"eps": -1e-8}, "eps"), (pg.scale_by_adam_precond, {"b1": 1.0}, "b1"),
    (pg.scale_by_adam_precond, {"b2": -0.1}, "b2"), (pg.ema_momentum, {"decay": 1.0}, "decay"),
    (pg.scale_by_rmsprop_precond, {"decay": 1.5}, "decay"), (pg.scale_by_adagrad_precond, {"eps": -1.0}, "eps"),
    (pg.scale_by_sgd_precond, {"delta": 0.0}, "delta"),
    (pg.scale_by_kfac_precond, {"momentum": 1.0}, "momentum"), (pg.scale_by_kfac_precond, {"decay": -0.1}, "decay"),
    (pg.scale_by_kfac_precond, {"damping": 0.0}, "damping"),
    (pg.scale_by_kfac_precond, {"damping_mode": "pi"}, "damping_mode"),
    (pg.scale_by_kfac_precond, {"update_every": 0}, "update_every"),
    (pg.scale_by_full_matrix_precond, {"max_size": 0}, "max_size"),
    (pg.scale_by_full_matrix_precond, {"eps": 0.0}, "eps"),
]


# CI runs the suite in ≤ 10 minutes on 2 cores and the battery's cost is XLA compilation. The default run holds
# every case to the cheap contracts and every *code path* to all of them; the cases below repeat a path another
# case covers in full (or compile an inner solver: minutes for the battery), so their costly contracts run with
# `-m slow`. Nothing is dropped: `pytest -m slow tests/test_contracts.py` runs the rest.
CHEAP = frozenset({"jit", "state", "params", "errors"})
# A regularizer's own numerics (NaN, bfloat16) through a link another case holds to every contract.
PER_REGULARIZER = CHEAP | {"finite", "bf16"}
IN_DEFAULT_RUN = {
    # prox_l1 and prox_lq_1/2 take every contract; the other closed forms run the same link.
    "prox_l0": PER_REGULARIZER, "prox_lq_2/3": PER_REGULARIZER, "prox_lq_0.3": PER_REGULARIZER,
    "prox_mcp": PER_REGULARIZER, "prox_scad": PER_REGULARIZER, "prox_binary": PER_REGULARIZER,
    "prox_quantize": PER_REGULARIZER,  # prox_quantize_channel takes every contract
    "prox_group_mcp": PER_REGULARIZER,  # prox_group_l12 takes every contract
    "proximal_step": CHEAP, "proxgen_adam": CHEAP, "proxgen_adam_masked": CHEAP,  # prox_l1's chain, built another way
    "revised_proxquant": CHEAP | {"bf16"},  # scale_by_adam_precond + prox_binary
    # The other preconditioners: their own state and arithmetic, through the same link.
    "proxgen_rmsprop": PER_REGULARIZER | {"multisteps"}, "proxgen_adagrad": PER_REGULARIZER | {"multisteps"},
    "proxgen_sgd": PER_REGULARIZER | {"multisteps"},
    "prox_sparsity_global_groups": CHEAP | {"finite"},  # prox_sparsity's path, one selection over all leaves
    "prox_sparsity": ALL - {"vmap"},  # vmap of three unrolled steps of the selection search: ~20 s to compile
    "proximal_step_metric_full_matrix": CHEAP,  # the inner solver: proximal_step_metric_adam runs all
    "proximal_step_metric_kfac": CHEAP, "proxgen_kfac": CHEAP,
}


def cases(contract: str, when: Callable[[Case], bool] = lambda c: True):
    return [pytest.param(c, id=c.name, marks=[] if contract in IN_DEFAULT_RUN.get(c.name, ALL) else [pytest.mark.slow])
            for c in CASES if contract in c.contracts and when(c)]


# ----------------------------------------------------------------------------------------------- helpers
def build(case: Case, **overrides) -> optax.GradientTransformation:
    return case.wrap(case.factory(**{**case.kwargs, **overrides}))


def extras(case: Case, p, x, y) -> dict:
    return case.extra(p, x, y) if case.extra else {}


def grad_and_extras(case: Case, p, x, y):
    return jax.grad(loss)(p, x, y), extras(case, p, x, y)


def run(tx, case: Case, params, x, y, steps: int):
    """``steps`` jitted full-batch steps; returns the params, the state and the last updates."""
    update = jax.jit(lambda g, s, p, e: tx.update(g, s, p, **e))
    state, updates = tx.init(params), None
    for _ in range(steps):
        g, e = grad_and_extras(case, params, x, y)
        updates, state = update(g, state, params, e)
        params = optax.apply_updates(params, updates)
    return params, state, updates


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def assert_trees_close(a, b, **kw):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u, np.float64), np.asarray(v, np.float64), **kw)


def kernel_zeros(params) -> int:
    return int(np.sum(np.asarray(params["dense"]["kernel"], np.float32) == 0))


def hyperparams(state) -> dict:
    """The ``hyperparams`` dict of the (single) ``inject_hyperparams`` state inside a chain's state."""
    found = [s.hyperparams for s in jax.tree.leaves(state, is_leaf=lambda s: hasattr(s, "hyperparams"))
             if hasattr(s, "hyperparams")]
    assert len(found) == 1, found
    return found[0]


def schedule_for(name: str, value):
    return optax.cosine_decay_schedule(value, 10) if name == "learning_rate" else optax.linear_schedule(
        0.5 * value, value, 10)


# ----------------------------------------------------------------------------------------------- contracts
@pytest.mark.parametrize("case", cases("jit"))
def test_jit_compiles_once_with_scheduled_hyperparameters(case):
    params, x, y = problem(kernel=case.kernel)
    tx = build(case, **{k: schedule_for(k, case.kwargs[k]) for k in case.schedules})
    traces = []

    @jax.jit
    def step(p, s):
        traces.append(1)
        g, e = grad_and_extras(case, p, x, y)
        u, s = tx.update(g, s, p, **e)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    with count_compiles() as compiles:
        for _ in range(5):
            params, state = step(params, state)
    assert len(traces) == 1 and len(compiles) == 1 and step._cache_size() == 1
    counts = optax.tree_utils.tree_get_all_with_path(state, "count")
    assert counts or not case.schedules  # a scheduled hyperparameter needs a step count in the state
    for path, count in counts:
        assert int(count) == 5, path


@pytest.mark.parametrize("case", cases("inject"))
def test_inject_hyperparams_equals_plain_factory_and_changes_take_effect(case):
    params, x, y = problem(kernel=case.kernel)
    g, e = grad_and_extras(case, params, x, y)
    injected = case.wrap(optax.inject_hyperparams(case.factory, static_args=case.static)(**case.kwargs))
    plain = build(case)
    traces = []

    def traced_update(g, s, p, e):
        traces.append(1)
        return injected.update(g, s, p, **e)

    step = jax.jit(traced_update)
    state = injected.init(params)
    hyper = hyperparams(state)
    names = {n for n in (case.lam, "learning_rate") if n is not None and n in case.kwargs}
    assert names <= set(hyper) and not set(case.static) & set(hyper)
    if case.lam in case.kwargs:
        np.testing.assert_allclose(float(hyper[case.lam]), case.kwargs[case.lam], rtol=1e-6)
    u, _ = step(g, state, params, e)
    w, _ = jax.jit(lambda g, s, p, e: plain.update(g, s, p, **e))(g, plain.init(params), params, e)
    # b2 = 0.999 as a float32 array makes 1 − b2 exact only to ~1e-5 (a Python float is exact): hence rtol.
    assert_trees_close(u, w, rtol=1e-4, atol=1e-9)
    if case.lam is not None:  # λ is a state leaf: a new value acts at the next step, without a retrace
        for lam in (0.0, case.huge_lam):
            hyper[case.lam] = jnp.asarray(lam, hyper[case.lam].dtype)
            u, _ = step(g, state, params, e)
            other = build(case, **{case.lam: lam})
            w, _ = jax.jit(lambda g, s, p, e, other=other: other.update(g, s, p, **e))(g, other.init(params), params, e)
            assert_trees_close(u, w, rtol=1e-4, atol=1e-9)
            new = optax.apply_updates(params, u)["dense"]
            if lam == 0.0:
                assert case.budget_zeros or all(np.all(np.asarray(v) != 0) for v in new.values())
            elif case.limit is not None:  # θ_t + (ℓ − θ_t) is ℓ to rounding; exactly 0 when ℓ = 0
                levels = np.asarray(case.limit)
                for leaf in case.regularised:
                    v = np.asarray(new[leaf], np.float64)
                    gap = np.min(np.abs(v[..., None] - levels), axis=-1)
                    assert np.all(gap <= 2.0 ** -22 * np.max(np.abs(levels))), (leaf, v)
                    if tuple(case.limit) == (0.0,):
                        assert np.all(v == 0), (leaf, v)
        assert len(traces) == 1 and step._cache_size() == 1
    if case.static:  # without them: refused loudly, never silently different
        with pytest.raises(case.unstatic_error):
            bad = case.wrap(optax.inject_hyperparams(case.factory)(**case.kwargs))
            jax.jit(lambda g, s, p, e: bad.update(g, s, p, **e))(g, bad.init(params), params, e)


@pytest.mark.parametrize("case", cases("multisteps"))
def test_multisteps_equals_one_step_on_the_mean_gradient(case):
    params, x, y = problem(kernel=case.kernel)
    k = 3
    micro = [grad_and_extras(case, params, x[i::k], y[i::k]) for i in range(k)]
    tx = build(case)
    multi = optax.MultiSteps(tx, every_k_schedule=k)
    update = jax.jit(lambda g, s, p, e: multi.update(g, s, p, **e))
    state, p = multi.init(params), params
    for i, (g, e) in enumerate(micro):
        updates, state = update(g, state, p, e)
        p = optax.apply_updates(p, updates)
        if i < k - 1:
            assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    mean = jax.tree.map(jnp.zeros_like, micro[0][0])
    for i, (g, _) in enumerate(micro):  # the running mean, as MultiSteps accumulates it
        mean = jax.tree.map(lambda m, g, i=i: m + (g - m) / (i + 1), mean, g)
    want, _ = jax.jit(lambda g, s, p, e: tx.update(g, s, p, **e))(mean, tx.init(params), params, micro[-1][1])
    rtol, atol = case.tol
    assert_trees_close(p, optax.apply_updates(params, want), rtol=rtol, atol=atol)
    if case.sparsifies:
        assert 0 < kernel_zeros(p) < p["dense"]["kernel"].size


@pytest.mark.parametrize("case", cases("finite"))
def test_nan_gradient_gives_nan_params_never_zeros(case):
    """At the case's λ and at a λ that would zero (or quantise) every coordinate of a finite input."""
    params, x, y = problem(kernel=case.kernel)
    nan = jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), params)
    for overrides in [{}] + ([{case.lam: case.huge_lam}] if case.lam else []):
        tx = build(case, **overrides)
        updates, _ = jax.jit(lambda g, s, p, e, tx=tx: tx.update(g, s, p, **e))(nan, tx.init(params), params,
                                                                                extras(case, params, x, y))
        for path, leaf in jax.tree_util.tree_flatten_with_path(optax.apply_updates(params, updates))[0]:
            assert np.all(np.isnan(np.asarray(leaf))), (overrides, jax.tree_util.keystr(path))


@pytest.mark.parametrize("case", cases("finite"))
def test_apply_if_finite_skips_nan_step_and_keeps_trajectory(case):
    params, x, y = problem(kernel=case.kernel)
    tx = build(case)
    guarded = optax.apply_if_finite(tx, max_consecutive_errors=3)
    update = jax.jit(lambda g, s, p, e: guarded.update(g, s, p, **e))
    state = guarded.init(params)
    g1, e1 = grad_and_extras(case, params, x, y)
    u1, state = update(g1, state, params, e1)
    p1 = optax.apply_updates(params, u1)
    g2, e2 = grad_and_extras(case, p1, x, y)
    nan = jax.tree.map(lambda g: g.at[0].set(jnp.nan), g2)
    u_nan, after_nan = update(nan, state, p1, e2)
    assert all(np.all(np.asarray(v) == 0) for v in jax.tree.leaves(u_nan))
    kept = optax.apply_updates(p1, u_nan)
    assert_trees_equal(kept, p1)  # unchanged: finite, and never zeroed
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(kept))
    assert int(after_nan.notfinite_count) == 1
    assert_trees_equal(after_nan.inner_state, state.inner_state)
    u2, _ = update(g2, after_nan, p1, e2)
    plain = jax.jit(lambda g, s, p, e: tx.update(g, s, p, **e))
    s = tx.init(params)
    v1, s = plain(g1, s, params, e1)
    v2, _ = plain(g2, s, optax.apply_updates(params, v1), e2)
    assert_trees_equal(optax.apply_updates(p1, u2), optax.apply_updates(optax.apply_updates(params, v1), v2))


@pytest.mark.parametrize("case", cases("bf16"))
def test_bfloat16_params_stay_bfloat16(case):
    params, x, y = problem(jnp.bfloat16, case.kernel)
    tx = build(case)
    state = tx.init(params)
    dtypes = jax.tree.map(lambda a: a.dtype, state)

    @jax.jit
    def step(p, s):
        g, e = grad_and_extras(case, p, x, y)
        u, s = tx.update(g, s, p, **e)
        return optax.apply_updates(p, u), s, u

    first = float(loss(params, x, y))
    with count_compiles() as compiles:
        for _ in range(20):
            params, state, updates = step(params, state)
    assert len(compiles) == 1
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(params))
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(updates))
    assert jax.tree.map(lambda a: a.dtype, state) == dtypes  # no promotion (which would also retrace)
    assert all(np.all(np.isfinite(np.asarray(a, np.float32))) for a in jax.tree.leaves((params, state)))
    assert float(loss(params, x, y)) < first
    if case.sparsifies:
        assert 0 < kernel_zeros(params) < params["dense"]["kernel"].size


@pytest.mark.parametrize("case", cases("vmap", lambda c: c.lam is not None))
def test_vmap_over_lambda_equals_unbatched_runs(case):
    params, x, y = problem(kernel=case.kernel)
    lam = case.kwargs[case.lam]
    lams = jnp.asarray([0.0, 0.3 * lam, lam, 3.0 * lam], jnp.float32)
    # A fixed sequence of gradients (and KFAC statistics), so that the runs differ only through λ.
    seq = [grad_and_extras(case, params, x[i::3], y[i::3]) for i in range(3)]

    def train(lam):
        tx = build(case, **{case.lam: lam})
        p, s = params, tx.init(params)
        for g, e in seq:
            u, s = tx.update(g, s, p, **e)
            p = optax.apply_updates(p, u)
        return p

    with count_compiles() as compiles:
        batched = jax.jit(jax.vmap(train))(lams)
    assert len(compiles) == 1
    rtol, atol = case.tol
    single = jax.jit(train)  # the same program, unbatched, with a traced λ
    for i, lam in enumerate(np.asarray(lams)):
        row = jax.tree.map(lambda b, i=i: b[i], batched)
        assert_trees_close(row, single(lams[i]), rtol=rtol, atol=atol)
        if case.tol == Case.tol:  # diagonal: also equal to the eager run with a Python-float λ
            assert_trees_close(row, train(float(lam)), rtol=rtol, atol=atol)


@pytest.mark.parametrize("case", cases("state", lambda c: c.state_like is not None))
def test_state_has_the_leaves_and_bytes_of_its_optax_twin(case):
    params, _, _ = problem(kernel=case.kernel)
    ours, twin = build(case).init(params), case.state_like().init(params)

    def leaves(state):
        return sorted((tuple(a.shape), str(a.dtype)) for a in jax.tree.leaves(state))

    def nbytes(state):
        return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(state))

    def arrays(state):  # the per-parameter buffers
        return [a for a in jax.tree.leaves(state) if a.ndim]

    assert leaves(arrays(ours)) == leaves(arrays(twin))
    assert nbytes(arrays(ours)) == nbytes(arrays(twin))
    scalars = [a for a in jax.tree.leaves(ours) if not a.ndim]
    assert len(scalars) == len(jax.tree.leaves(twin)) - len(arrays(twin)) + len(case.extra_scalars)
    for name in case.extra_scalars:  # each declared extra scalar exists, by name
        assert optax.tree_utils.tree_get_all_with_path(ours, name), name
    if not case.extra_scalars:
        assert leaves(ours) == leaves(twin) and nbytes(ours) == nbytes(twin)


@pytest.mark.parametrize("case", cases("params"))
def test_update_without_params_is_a_clear_error(case):
    params, x, y = problem(kernel=case.kernel)
    tx = build(case)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params), **extras(case, params, x, y))


ERROR_ROWS = [pytest.param(c.factory, {**c.kwargs, **bad}, name, id=f"{c.name}-{name}={list(bad.values())[0]!r}")
              for c in CASES if "errors" in c.contracts for bad, name in c.invalid]
ERROR_ROWS += [pytest.param(f, bad, name, id=f"{f.__name__}-{name}={list(bad.values())[0]!r}")
               for f, bad, name in PRECONDITIONER_ERRORS]


@pytest.mark.parametrize("factory, kwargs, name", ERROR_ROWS)
def test_invalid_hyperparameter_raises_value_error_naming_it(factory, kwargs, name):
    with pytest.raises(ValueError, match=re.escape(f"`{name}`")):
        factory(**kwargs)


def test_every_public_transformation_has_a_row():
    """A new public factory without a row in ``CASES`` fails here (preconditioners: ``PRECONDITIONER_ERRORS``)."""
    covered = {c.factory for c in CASES} | {f for f, _, _ in PRECONDITIONER_ERRORS}
    public = [getattr(pg, n) for n in pg.__all__] + [getattr(pg.baselines, n) for n in pg.baselines.__all__]
    factories = [f for f in public if callable(f) and getattr(f, "__annotations__", {}).get("return") in (
        "optax.GradientTransformation", "optax.GradientTransformationExtraArgs")]
    missing = sorted(f.__name__ for f in factories if f not in covered)
    assert not missing, f"add a Case (or a PRECONDITIONER_ERRORS row) for: {missing}"
