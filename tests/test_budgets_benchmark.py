"""``benchmarks/budgets.py``: its gradual-magnitude-pruning baseline against NumPy, and (slow) the --quick runs of
the study and of the torchao PAT side by side."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from budgets import gradual_magnitude_pruning, structure  # noqa: E402


def test_gmp_keeps_the_largest_magnitudes_and_pruned_weights_never_regrow():
    rng = np.random.default_rng(0)
    w = rng.standard_normal(20).astype(np.float32)
    sched = lambda t: jnp.where(t < 2, 0.5, 0.75)  # noqa: E731
    tx = gradual_magnitude_pruning(sched, mask=None, begin=0, end=2, every=2)
    params = {"w": jnp.asarray(w)}
    state = tx.init(params)
    u0 = rng.standard_normal(20).astype(np.float32)
    upd, state = tx.update({"w": jnp.asarray(u0)}, state, params)  # t = 0: refresh at s = 0.5
    new = w + u0
    keep = np.zeros(20, bool)
    keep[np.argsort(-np.abs(new))[:10]] = True
    x1 = np.asarray(params["w"] + upd["w"])
    np.testing.assert_allclose(x1, np.where(keep, new, 0.0), rtol=1e-6)
    # t = 1: no refresh; a huge update on a pruned weight does not bring it back.
    u1 = np.where(keep, 0.01, 100.0).astype(np.float32)
    upd, state = tx.update({"w": jnp.asarray(u1)}, state, {"w": jnp.asarray(x1)})
    x2 = np.asarray(x1 + upd["w"])
    np.testing.assert_array_equal(x2 == 0, ~keep)
    # t = 2: refresh at s = 0.75 keeps the 5 largest of the survivors.
    upd, state = tx.update({"w": jnp.zeros(20)}, state, {"w": jnp.asarray(x2)})
    x3 = np.asarray(x2 + upd["w"])
    keep3 = np.zeros(20, bool)
    keep3[np.argsort(-np.abs(x2))[:5]] = True
    np.testing.assert_allclose(x3, np.where(keep3, x2, 0.0), rtol=1e-6)


def test_gmp_nm_is_one_shot_at_the_end_and_structure_checks_the_pattern():
    w = np.arange(1, 17, dtype=np.float32).reshape(8, 2) * np.array([1, -1], np.float32)
    tx = gradual_magnitude_pruning(lambda t: 0.5, mask=None, begin=0, end=1, nm=(2, 4))
    params = {"kernel": jnp.asarray(w)}
    state = tx.init(params)
    upd, state = tx.update({"kernel": jnp.zeros((8, 2))}, state, params)  # t = 0: still dense
    np.testing.assert_array_equal(np.asarray(params["kernel"] + upd["kernel"]), w)
    upd, state = tx.update({"kernel": jnp.zeros((8, 2))}, state, params)  # t = 1: 2 largest |w| of each 4 rows
    x = np.array(params["kernel"] + upd["kernel"])
    expected = w.copy()
    expected[[0, 1, 4, 5], :] = 0.0
    np.testing.assert_array_equal(x, expected)
    st = structure({"kernel": jnp.asarray(x)}, "2:4")
    assert st["pattern_holds"] and st["sparsity"] == 0.5
    x[0, 0] = 1.0  # three nonzeros in the first block of column 0
    assert not structure({"kernel": jnp.asarray(x)}, "2:4")["pattern_holds"]


@pytest.mark.slow
@pytest.mark.parametrize("script,name", [("budgets.py", "budgets.json"), ("pat_side_by_side.py",
                                                                          "pat_side_by_side.json")])
def test_quick_modes(script, name, tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / name) as f:
        res = json.load(f)
    if "skipped" in res:
        return
    for r in res["rows"]:
        if r.get("kind", r.get("budget")) in ("2:4",):
            assert r["pattern_holds"], r
    if script == "budgets.py":
        with open(tmp_path / "budgets.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        for r in res["rows"]:  # the exact budgets hold exactly (up to ⌊·⌋ per kernel)
            if r["method"] in ("metric", "euclid", "gmp") and r["kind"] == "unstructured":
                assert abs(r["sparsity_mean"] - r["target"]) < 2e-3, r
