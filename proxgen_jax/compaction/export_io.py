"""Exported kernels as a whole: ``unpack``, sizes before/after, and save/restore with Orbax (bit for bit).

An *export* is a dict ``name → kernel`` whose values are :class:`~proxgen_jax.compaction.sparse_export.SparseKernel`,
:class:`~proxgen_jax.compaction.sparse_export.NMKernel`, :class:`~proxgen_jax.compaction.quant_export.PackedKernel`
or plain arrays (kept dense). :func:`save_export` writes it as one Orbax checkpoint (the arrays of every kernel,
plus the small metadata — format, shape, n:m, bit width — as a JSON string stored in a uint8 array), and
:func:`restore_export` gives back the same objects with bit-identical arrays.

Example:
  >>> import tempfile, os, numpy as np
  >>> from proxgen_jax.compaction import export_sparse, pack_quantized
  >>> exp = {"a": export_sparse(np.array([0.0, 1.5], np.float32)),
  ...        "b": pack_quantized(np.array([[-0.5, 0.5]], np.float32), "binary")}
  >>> path = os.path.join(tempfile.mkdtemp(), "ckpt")
  >>> save_export(path, exp)
  >>> back = restore_export(path)
  >>> unpack(back["a"]).tolist(), unpack(back["b"]).tolist()
  ([0.0, 1.5], [[-0.5, 0.5]])
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from proxgen_jax.compaction.quant_export import PackedKernel
from proxgen_jax.compaction.sparse_export import ExportError, NMKernel, SparseKernel

_CLASSES = {"sparse": SparseKernel, "nm": NMKernel, "packed": PackedKernel}
_KIND = {cls: name for name, cls in _CLASSES.items()}


def unpack(exported) -> np.ndarray:
    """The dense kernel of an exported one (bit for bit); a plain array is returned as it is.

    Example:
      >>> import numpy as np
      >>> from proxgen_jax.compaction import export_nm
      >>> k = np.array([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0], [0.0, -3.0]], np.float32)
      >>> bool((unpack(export_nm(k, 2, 4)) == k).all())
      True
    """
    if type(exported) in _KIND:
        return exported.unpack()
    return np.asarray(exported)


def nbytes(exported) -> tuple[int, int]:
    """``(dense bytes, stored bytes)`` of one exported kernel (or a plain array: both its size)."""
    if type(exported) in _KIND:
        return exported.dense_nbytes, exported.nbytes
    a = np.asarray(exported)
    return int(a.nbytes), int(a.nbytes)


def storage_report(export: dict[str, Any]) -> str:
    """A Markdown table: per kernel its format, bytes dense → stored and the ratio, and the total.

    Example:
      >>> import numpy as np
      >>> from proxgen_jax.compaction import pack_quantized
      >>> print(storage_report({"w": pack_quantized(np.ones((64, 2), np.float32), "binary")}).splitlines()[2])
      | w | binary (1 bit) | 512 → 24 | 21.3× |
    """
    rows = ["| kernel | format | bytes dense → stored | ratio |", "|---|---|---|---|"]
    td = ts = 0
    for name, e in export.items():
        d, s = nbytes(e)
        td, ts = td + d, ts + s
        if isinstance(e, PackedKernel):
            fmt = f"{e.kind} ({e.bits} bit{'s' if e.bits > 1 else ''})"
        elif isinstance(e, NMKernel):
            fmt = f"{e.n}:{e.m} ({e.code_bits}-bit metadata)"
        elif isinstance(e, SparseKernel):
            fmt = f"sparse ({e.nnz} stored)"
        else:
            fmt = "dense"
        rows.append(f"| {name} | {fmt} | {d:,} → {s:,} | {d / max(s, 1):.1f}× |")
    rows.append(f"| **total** | | {td:,} → {ts:,} | {td / max(ts, 1):.1f}× |")
    return "\n".join(rows)


def _to_tree(export: dict[str, Any]) -> tuple[dict, dict]:
    arrays, meta = {}, {}
    for name, e in export.items():
        if type(e) in _KIND:
            fields = dataclasses.asdict(e)
            arrays[name] = {k: np.asarray(v) for k, v in fields.items() if isinstance(v, np.ndarray)}
            meta[name] = {"format": _KIND[type(e)],
                          **{k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()
                             if not isinstance(v, np.ndarray)}}
        else:
            arrays[name] = {"dense": np.asarray(e)}
            meta[name] = {"format": "dense"}
    return arrays, meta


def save_export(path: str, export: dict[str, Any]) -> None:
    """Writes ``export`` (see the module docstring) as an Orbax checkpoint at ``path`` (a new directory).

    Args:
      path: absolute path of the checkpoint directory (must not exist).
      export: ``name → SparseKernel | NMKernel | PackedKernel | array``.

    Example:
      >>> import tempfile, os, numpy as np
      >>> from proxgen_jax.compaction import pack_quantized
      >>> p = os.path.join(tempfile.mkdtemp(), "w")
      >>> save_export(p, {"w": pack_quantized(np.array([0.25, -0.25], np.float32), "binary", per_channel=False)})
      >>> restore_export(p)["w"].unpack().tolist()
      [0.25, -0.25]
    """
    import orbax.checkpoint as ocp
    if not isinstance(export, dict) or not all(isinstance(k, str) for k in export):
        raise ExportError("`export` must be a dict with string keys.")
    arrays, meta = _to_tree(export)
    text = np.frombuffer(json.dumps(meta).encode(), np.uint8).copy()
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, {"arrays": arrays, "meta": text})


def restore_export(path: str) -> dict[str, Any]:
    """Reads a checkpoint of :func:`save_export`: the same kernel objects, arrays bit-identical (NumPy)."""
    import orbax.checkpoint as ocp
    with ocp.StandardCheckpointer() as ckpt:
        tree = ckpt.restore(path)
    meta = json.loads(np.asarray(tree["meta"], np.uint8).tobytes().decode())
    out = {}
    for name, m in meta.items():
        arrs = {k: np.asarray(v) for k, v in tree["arrays"][name].items()}
        fmt = m.pop("format")
        if fmt == "dense":
            out[name] = arrs["dense"]
            continue
        kw = {k: (tuple(v) if k == "shape" else v) for k, v in m.items()}
        out[name] = _CLASSES[fmt](**arrs, **kw)
    return out
