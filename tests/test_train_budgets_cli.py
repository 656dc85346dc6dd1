"""``python -m proxgen_jax.train --sparsity S`` / ``--nm N:M``: the budget holds exactly per kernel, and the per-layer
structure report counts what it claims (checked against hand-made arrays)."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import jax.numpy as jnp
import numpy as np
import pytest

from proxgen_jax.train import cli
from proxgen_jax.train.budgets import Budget, layer_structure, nm_kernels
from proxgen_jax.train.optimizers import build_optimizer

FAST = ["--model", "mlp", "--epochs", "1", "--no-progress", "--no-plots"]


def test_cli_sparsity_budget_is_exact_per_kernel(tmp_path, capsys):
    res = cli.main(["--sparsity", "0.8", "--out", str(tmp_path), *FAST])
    printed = capsys.readouterr().out
    assert "proxgen_adam[sparsity 0.8]" in printed and "Achieved structure" in printed
    (run,) = res["runs"]
    rows = run["structure"]
    assert {r["layer"] for r in rows} == {"['hidden'][0]['kernel']", "['head']['kernel']"}
    for r in rows:  # k = ⌊(1 − s)·n⌋ weights free, the rest exactly zero (a free weight is 0 with probability 0)
        zeros = round(r["sparsity"] * r["size"])
        assert r["size"] - zeros == math.floor((1 - Fraction("0.8")) * r["size"]), r
        assert f"{100 * r['sparsity']:.1f} %" in printed
    with open(tmp_path / "results.json") as f:
        assert json.load(f)["runs"][0]["budget"]["kind"] == "sparsity"
    assert run["final"]["test_acc"] > 0.3  # it still learns


def test_cli_nm_budget_holds_in_every_block(tmp_path, capsys):
    res = cli.main(["--nm", "2:4", "--out", str(tmp_path), *FAST])
    printed = capsys.readouterr().out
    assert "proxgen_adam[2:4]" in printed and "blocks 2:4" in printed
    for r in res["runs"][0]["structure"]:
        assert r["budgeted"] and r["nm_blocks_ok"] == 1.0
        assert r["sparsity"] == pytest.approx(0.5)  # exactly 2 of 4 free, almost surely nonzero


def test_cli_budget_arguments_are_checked():
    for argv in (["--sparsity", "0.9", "--nm", "2:4"], ["--nm", "2-4"], ["--nm", "5:4"], ["--sparsity", "1.5"]):
        with pytest.raises(SystemExit):
            cli.main([*argv, *FAST])
    with pytest.raises(ValueError, match="budget"):
        build_optimizer("subgradient_adam", budget=Budget("sparsity", sparsity=0.5))


def test_layer_structure_counts_blocks_and_filters():
    # Dense (8, 2) blocked along axis 0 in blocks of 4: column 0 has blocks with 2 and 3 nonzeros, column 1 with 1, 0.
    k = np.zeros((8, 2), np.float32)
    k[[0, 1, 4, 5, 6], 0] = 1.0
    k[2, 1] = 1.0
    conv = np.ones((3, 3, 1, 4), np.float32)  # input length 1: cannot be blocked by 4
    params = {"a": {"kernel": jnp.asarray(k)}, "c": {"kernel": jnp.asarray(conv)}, "a_bias": {"bias": jnp.ones(2)}}
    rows = {r["layer"]: r for r in layer_structure(params, Budget("nm", n=2, m=4))}
    assert set(rows) == {"['a']['kernel']", "['c']['kernel']"}
    assert rows["['a']['kernel']"]["nm_blocks_ok"] == 0.75 and rows["['a']['kernel']"]["sparsity"] == 10 / 16
    assert rows["['c']['kernel']"]["nm_blocks_ok"] is None and not rows["['c']['kernel']"]["budgeted"]
    flags = nm_kernels(4)(params)
    assert flags["a"]["kernel"] and not flags["c"]["kernel"] and not flags["a_bias"]["bias"]
    conv[..., 1] = 0.0  # one of four filters all zero
    rows = layer_structure({"c": {"kernel": jnp.asarray(conv)}}, Budget("sparsity", sparsity=0.5, units="filters"))
    assert rows[0]["zero_filters"] == 0.25 and rows[0]["sparsity"] == 0.25
