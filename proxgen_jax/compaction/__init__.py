"""Compaction of group-sparse Flax nnx models and export of sparse / quantised weights.

* :func:`compact` — the physically smaller module (same classes, same eval-mode outputs), ties read from the
  jaxpr; :func:`compaction_plan` — what it would remove; :func:`compaction_report` — per layer units, parameters
  and FLOPs before/after.
"""

from proxgen_jax.compaction.compact import compact, compaction_plan
from proxgen_jax.compaction.graph import CompactionError
from proxgen_jax.compaction.plan import Plan
from proxgen_jax.compaction.report import CompactionReport, compaction_report, layer_flops

__all__ = [
    "CompactionError", "CompactionReport", "Plan", "compact", "compaction_plan", "compaction_report", "layer_flops",
]
