"""Every benchmark's ``--quick`` mode runs end to end (in its own process) and writes its JSON and plots.

The measured claims behind the benchmarks are asserted in the library's own tests (e.g. ``test_lasso_study.py``,
``test_group_l12.py``, ``test_target_sparsity.py``); this keeps the scripts that produce RESULTS.md from rotting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BENCHMARKS = [  # (script, JSON file it writes, PNG files it writes)
    ("fig2_sparse_cnn.py", "fig2.json", ["fig2_objective.png", "fig2_curves.png"]),
    ("table3_binary.py", "table3.json", ["table3_curves.png"]),
    ("granger_causality.py", "granger_causality.json", ["granger_causality.png"]),
    ("kfac_digits.py", "kfac_digits.json", ["kfac_digits.png"]),
    ("step_overhead.py", "step_overhead.json", []),
    ("step_cycles.py", "step_cycles.json", []),
    ("train_step.py", "train_step.json", []),
    ("step_asm.py", "step_asm.json", []),
    ("group_step_time.py", "group_step_time.json", []),
    ("target_sparsity.py", "target_sparsity.json", []),
    ("quantization.py", "quantization.json", ["quantization.png"]),
    ("compaction.py", "compaction.json", ["compaction.png"]),
]


# CI runs the whole suite in ≤ 10 minutes on 2 cores, so only the scripts whose --quick run takes seconds stay in
# the default run; the studies (20–60 s each in quick mode) run with `-m slow`, and `benchmarks/run_all.py` runs
# them in full. Their claims are asserted by the library's own tests, not here.
FAST = {"step_asm.py"}


@pytest.mark.parametrize("script,json_name,pngs", [
    pytest.param(*b, id=b[0], marks=[] if b[0] in FAST else [pytest.mark.slow]) for b in BENCHMARKS])
def test_benchmark_quick_mode(script, json_name, pngs, tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / json_name) as f:
        result = json.load(f)
    assert result
    for png in pngs:
        with open(tmp_path / png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_step_overhead_rows_and_state_bytes(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "step_overhead.py"), "--quick",
                           "--rounds", "1", "--only", "l1,l1/2", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "step_overhead.json") as f:
        rows = json.load(f)["rows"]
    assert [r["regularizer"] for r in rows] == ["l1", "l1/2"]
    # Diagonal ProxGen keeps exactly optax.adam's optimizer state.
    assert all(r["state_bytes"] == r["adam_state_bytes"] for r in rows)


def test_parq_side_by_side_quick_or_skipped(tmp_path):
    """Runs torchao's PARQ next to ours when torch/torchao are installed (extra ``torch``), else records the skip."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "parq_side_by_side.py"), "--quick",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "parq_side_by_side.json") as f:
        result = json.load(f)
    if "skipped" in result:
        pytest.skip(result["skipped"])
    assert {r["method"] for r in result["rows"]} >= {"torchao PARQ (UnifQuantizer, ProxPARQ)",
                                                      "ours: ProxGen (metric fit)"}
    assert all(0.0 <= r["acc_mean"] <= 100.0 for r in result["rows"])
