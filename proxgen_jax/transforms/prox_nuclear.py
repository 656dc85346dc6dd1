r"""Low rank as an optax transformation: the nuclear norm's prox in the preconditioner's metric.

``optax.chain(scale_by_adam_precond(), prox_nuclear(lam, lr))`` applies ProxGen's step
``θ_{t+1} = prox^{C_t+δI}_{α_t λ ‖·‖_*}(θ_t − α_t (C_t+δI)^{-1} m_t)`` to every parameter with ``ndim ≥ 2``:
whole singular values become exactly zero, so the kernels' rank drops. See
:class:`~proxgen_jax.regularizers.nuclear.NuclearNorm` for the maths (matricisation, the solver, its
certificate) and :func:`~proxgen_jax.transforms.proximal_step.proximal_step` for the chain.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from proxgen_jax._tree import MaskOrFn
from proxgen_jax.regularizers.nuclear import MAX_ITERS, TOL, NuclearNorm
from proxgen_jax.transforms.proximal_step import proximal_step


def prox_nuclear(
    lam: optax.ScalarOrSchedule = 1e-4,
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    *,
    matricize: str = "flatten",
    tol: float = TOL,
    max_iters: int = MAX_ITERS,
    mask: MaskOrFn = None,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
) -> optax.GradientTransformation:
    r"""The nuclear norm ``λ Σ_W ‖W‖_*`` over the parameter matrices, by the exact preconditioned proximal step.

    With ``z = θ_t − α_t(C_t+δI)^{-1} m_t`` and ``w_i = (C_{t,i}+δ)/α_t``, each kernel ``W`` steps to

    .. math:: θ_{t+1} = \operatorname{argmin}_X\; λ‖X‖_* + \tfrac12 \sum_i w_i (x_i - z_i)^2 ,

    solved by accelerated proximal gradient with singular-value thresholding inside, until the relative
    objective gap is certified below ``tol`` (default 1e-6) or after ``max_iters`` iterations (one SVD each,
    about ``√κ·log(1/tol)`` of them for ``κ = max w / min w`` within the matrix). After a plain optax transform
    (no metric) it is one singular-value soft thresholding at ``α_t λ``. Leaves with ``ndim < 2`` (biases,
    norm scales) are left unregularised; conv kernels ``(…, in, out)`` are matricised as
    ``(prod(…)·in, out)`` (``matricize="batch"``: every ``(…, m, n)`` leaf is a stack of ``m × n`` matrices).
    For KFAC or full-matrix metrics use ``proximal_step_metric(NuclearNorm(), ...)``.

    Example:
      >>> import optax, proxgen_jax as pg
      >>> tx = optax.chain(pg.scale_by_adam_precond(), pg.prox_nuclear(1e-3, 1e-3))

    Args:
      lam: ``λ ≥ 0``, a float or an optax schedule.
      learning_rate: ``α_t > 0``, a float or an optax schedule.
      matricize: ``"flatten"`` or ``"batch"`` (see :class:`~proxgen_jax.regularizers.nuclear.NuclearNorm`).
      tol: relative duality-gap tolerance of the metric prox, in ``(0, 1)``.
      max_iters: most iterations of the metric prox (``≥ 1``).
      mask: which leaves to regularise (``None``: every leaf with ``ndim ≥ 2``).
      weight_decay: decoupled weight decay ``θ ← θ(1 − α_t·wd)`` before the prox.
      weight_decay_mask: which leaves decay (``None``: all).

    Returns:
      An ``optax.GradientTransformation``; its ``update`` requires ``params``.

    References:
      Cai, Candès & Shen, *A Singular Value Thresholding Algorithm for Matrix Completion*, SIAM J. Optim. 2010.
      Yun, Lozano & Yang, *Adaptive Proximal Gradient Methods for Structured Neural Networks*, NeurIPS 2021.
    """
    reg = NuclearNorm(matricize, tol, max_iters)  # validates the options now, at construction

    def choose(path, leaf):
        del path
        return reg if jnp.ndim(leaf) >= 2 else None

    return proximal_step(choose, lam, learning_rate, mask=mask, weight_decay=weight_decay,
                         weight_decay_mask=weight_decay_mask)
