"""Named prox transformations: ``proximal_step`` with a fixed regularizer, for the common penalties.

Each is the last link of ``optax.chain(preconditioner, prox_*(...))``; see :func:`proximal_step` for the
update, the Euclidean fallback after a plain optax transform, and the ``mask`` argument. ``lam`` (λ) and
``learning_rate`` (α_t) accept floats or optax schedules; the defaults (``lam=1e-4``, ``learning_rate=1e-3``,
Adam's usual step) make ``optax.chain(scale_by_adam_precond(), prox_lq(q=0.5))`` run as written. Every one takes
the decoupled ``weight_decay`` (and ``weight_decay_mask``) of :func:`proximal_step`: ``θ ← θ(1 − α_t·wd)``, then
the prox, in the order of the reference ProxGen optimizers.
"""

from __future__ import annotations

import optax

from proxgen_jax._tree import MaskOrFn
from proxgen_jax.regularizers import L0, L1, MCP, SCAD, Quantization, lq
from proxgen_jax.transforms.proximal_step import proximal_step


def prox_l0(lam: optax.ScalarOrSchedule = 1e-4, learning_rate: optax.ScalarOrSchedule = 1e-3, *,
            mask: MaskOrFn = None, weight_decay: optax.ScalarOrSchedule = 0.0,
            weight_decay_mask: MaskOrFn = None) -> optax.GradientTransformation:
    """ℓ0 (hard thresholding at ``√(2α_tλ/(C_t+δ))``, Eq. 4)."""
    return proximal_step(L0(), lam, learning_rate, mask=mask, weight_decay=weight_decay,
                         weight_decay_mask=weight_decay_mask)


def prox_l1(lam: optax.ScalarOrSchedule = 1e-4, learning_rate: optax.ScalarOrSchedule = 1e-3, *,
            mask: MaskOrFn = None, weight_decay: optax.ScalarOrSchedule = 0.0,
            weight_decay_mask: MaskOrFn = None) -> optax.GradientTransformation:
    """ℓ1 (soft thresholding at ``α_tλ/(C_t+δ)``, Eq. 3)."""
    return proximal_step(L1(), lam, learning_rate, mask=mask, weight_decay=weight_decay,
                         weight_decay_mask=weight_decay_mask)


def prox_lq(q: float = 0.5, lam: optax.ScalarOrSchedule = 1e-4, learning_rate: optax.ScalarOrSchedule = 1e-3,
            *, mask: MaskOrFn = None, weight_decay: optax.ScalarOrSchedule = 0.0,
            weight_decay_mask: MaskOrFn = None) -> optax.GradientTransformation:
    """ℓq for ``0 ≤ q ≤ 1`` (``q = 0``: ℓ0, ``q = 1``: ℓ1; ½ and ⅔ are the paper's closed-form cases)."""
    return proximal_step(lq(q), lam, learning_rate, mask=mask, weight_decay=weight_decay,
                         weight_decay_mask=weight_decay_mask)


def prox_mcp(lam: optax.ScalarOrSchedule = 1e-4, learning_rate: optax.ScalarOrSchedule = 1e-3, *,
             gamma: float = 3.0, mask: MaskOrFn = None, weight_decay: optax.ScalarOrSchedule = 0.0,
            weight_decay_mask: MaskOrFn = None) -> optax.GradientTransformation:
    """MCP(λ, γ), with the regime (firm or hard thresholding) chosen per coordinate."""
    return proximal_step(MCP(gamma), lam, learning_rate, mask=mask, weight_decay=weight_decay,
                         weight_decay_mask=weight_decay_mask)


def prox_scad(lam: optax.ScalarOrSchedule = 1e-4, learning_rate: optax.ScalarOrSchedule = 1e-3, *,
              gamma: float = 3.7, mask: MaskOrFn = None, weight_decay: optax.ScalarOrSchedule = 0.0,
            weight_decay_mask: MaskOrFn = None) -> optax.GradientTransformation:
    """SCAD(λ, γ), with the regime chosen per coordinate."""
    return proximal_step(SCAD(gamma), lam, learning_rate, mask=mask, weight_decay=weight_decay,
                         weight_decay_mask=weight_decay_mask)


def prox_binary(q: float = 1.0, lam: optax.ScalarOrSchedule = 1e-4, learning_rate: optax.ScalarOrSchedule = 1e-3,
                *, mask: MaskOrFn = None, weight_decay: optax.ScalarOrSchedule = 0.0,
            weight_decay_mask: MaskOrFn = None) -> optax.GradientTransformation:
    """The W-shaped ``λ·dist(θ, {−1, +1})^q`` — revised ProxQuant after a ProxGen preconditioner (Table 2)."""
    return proximal_step(Quantization((-1.0, 1.0), q), lam, learning_rate, mask=mask, weight_decay=weight_decay,
                         weight_decay_mask=weight_decay_mask)
