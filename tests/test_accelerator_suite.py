"""``benchmarks/accelerator_suite.py`` runs end to end on the CPU at its tiny size and writes a complete JSON.

The suite is meant to be run once on a lent GPU/TPU; this keeps it from rotting in between. Its correctness
checks (``benchmarks/device_checks.py``) then run on the CPU and must pass here too.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import accelerator_suite as suite  # noqa: E402
import device_checks  # noqa: E402


@pytest.mark.slow  # ~20 s: the suite's tiny run with its device checks on the CPU (benchmarks run it)
def test_tiny_run_writes_every_section(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "accelerator_suite.py"), "--size", "tiny",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "accelerator_suite.json") as f:
        result = json.load(f)
    assert result["errors"] == {} and result["skipped"] == []
    assert result["device"]["backend"] == "cpu" and result["device"]["peak_gbps"] is None
    rows = result["sections"]["step_1b"]["rows"]
    assert [r["regularizer"] for r in rows] == ["l1"]
    step = rows[0]["donated"]
    assert math.isfinite(step["ratio"]) and step["ours_gbps"] > 0 and step["ours_fraction_of_peak"] is None
    n = result["sections"]["step_1b"]["params"]
    assert result["sections"]["step_1b"]["bytes_model_per_step"] == 7 * 4 * n
    assert rows[0]["compile"]["ours"]["fusions"] > 0
    train = result["sections"]["train_step"]["cifar"]["rows"]
    assert train[0]["regularizer"] == "l1" and math.isfinite(train[0]["ratio"])
    checks = result["sections"]["checks"]
    assert result["checks_passed"] is True
    assert set(checks["prox_samples"]["rows"]) == {name for name, *_ in device_checks.ELEMENTWISE}
    assert checks["platform_dependent"]["host_cpu"]["passed"]


def test_peak_table_and_memory_fit():
    peak = suite.peak_gbps
    assert peak("NVIDIA H200") == 4800.0
    assert peak("NVIDIA H100 80GB HBM3") == 3350.0
    assert peak("NVIDIA H100 PCIe") == 2000.0
    assert peak("NVIDIA A100-SXM4-80GB") == 2039.0
    assert peak("TPU v5 lite") == 819.0
    assert peak("cpu") is None
    assert abs(suite.n_params(suite.lm_shapes(2048, 19, 32768)) - 1.0e9) < 0.05e9
    d, layers, vocab = suite.fit_lm((2048, 19, 32768), 16 * 2**30)  # a 16 GiB device: fewer layers
    assert layers < 19 and 12 * 4 * suite.n_params(suite.lm_shapes(d, layers, vocab)) <= 0.7 * 16 * 2**30
    assert suite.fit_lm((2048, 19, 32768), None) == (2048, 19, 32768)
