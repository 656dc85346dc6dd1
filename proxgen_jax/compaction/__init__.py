"""Compaction of group-sparse Flax nnx models and export of sparse / quantised weights.

* :func:`compact` — the physically smaller module (same classes, same eval-mode outputs), ties read from the
  jaxpr; :func:`compaction_plan` — what it would remove; :func:`compaction_report` — per layer units, parameters
  and FLOPs before/after.
* Export (bit for bit, or :class:`ExportError`): :func:`export_sparse` / :func:`to_bcoo` (unstructured),
  :func:`export_nm` (N:M values + tensor-core metadata), :func:`pack_quantized` (binary 1 bit, ternary 2 bits,
  k-bit, with scales); :func:`unpack`; :func:`storage_report` (bytes before/after); :func:`save_export` /
  :func:`restore_export` (Orbax).
* :mod:`~proxgen_jax.compaction.measure` — accuracy and jitted latency of a dense and a compacted model.
"""

from proxgen_jax.compaction.compact import compact, compaction_plan
from proxgen_jax.compaction.export_io import restore_export, save_export, storage_report, unpack
from proxgen_jax.compaction.graph import CompactionError
from proxgen_jax.compaction.plan import Plan
from proxgen_jax.compaction.quant_export import PackedKernel, pack_quantized
from proxgen_jax.compaction.report import CompactionReport, compaction_report, layer_flops
from proxgen_jax.compaction.sparse_export import ExportError, NMKernel, SparseKernel, export_nm, export_sparse, to_bcoo

__all__ = [
    "CompactionError", "CompactionReport", "ExportError", "NMKernel", "PackedKernel", "Plan", "SparseKernel",
    "compact", "compaction_plan", "compaction_report", "export_nm", "export_sparse", "layer_flops",
    "pack_quantized", "restore_export", "save_export", "storage_report", "to_bcoo", "unpack",
]
