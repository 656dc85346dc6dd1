"""``python -m proxgen_jax.train --compact``: after training, the compaction report and the smaller model's accuracy
and latency; the compacted model is the trained one (same test accuracy), the report's counts add up."""

from __future__ import annotations

import functools

import numpy as np

from proxgen_jax.train import cli
from proxgen_jax.train.data import load_digits_split


def small_digits(n_train=256):
    x_tr, y_tr, x_te, y_te = load_digits_split()
    return x_tr[:n_train], y_tr[:n_train], x_te, y_te


def test_compact_flag_reports_the_trained_model(monkeypatch):
    monkeypatch.setattr(cli, "compact_run", functools.partial(cli.compact_run, repeats=2))   # latency: 2 calls
    args = cli.resolve_args(cli.build_parser().parse_args(
        ["--task", "group", "--model", "mlp", "--optimizer", "proxgen_adam", "--lam", "0.05", "--epochs", "2",
         "--batch-size", "32", "--compact", "--no-progress", "--no-plots"]))
    (run,) = cli.run_grid(args, data=small_digits())
    c = run["compaction"]
    assert c["acc_dense"] == run["final"]["test_acc"] == c["acc_small"]          # the rebuilt model is the trained one
    t = c["totals"]
    assert t["params_after"] <= t["params_before"] and t["flops_after"] <= t["flops_before"]
    assert t["output_rel_error"] <= 1e-5 and t["bytes_after"] == 4 * t["params_after"]
    assert set(c["latency"]) == {1, 256} and all(v["small_ms"] > 0 for v in c["latency"].values())
    text = cli.format_compaction(c)
    assert "| hidden/0 | Linear |" in text and "test accuracy: dense" in text and "batch 256" in text


def test_compact_after_a_filter_budget_removes_the_zeroed_neurons(monkeypatch):
    """``--sparsity 0.5 --budget-units filters --compact``: the budget zeroes half the neurons of every hidden
    layer, and compaction removes them — the compacted model has the trained model's accuracy."""
    monkeypatch.setattr(cli, "compact_run", functools.partial(cli.compact_run, repeats=2))
    args = cli.resolve_args(cli.build_parser().parse_args(
        ["--task", "sparse", "--model", "mlp", "--optimizer", "proxgen_adam", "--sparsity", "0.5", "--budget-units",
         "filters", "--epochs", "2", "--batch-size", "32", "--compact", "--no-progress", "--no-plots"]))
    (run,) = cli.run_grid(args, data=small_digits())
    c = run["compaction"]
    assert c["acc_dense"] == run["final"]["test_acc"] == c["acc_small"]
    assert run["budget"]["units"] == "filters" and run["structure"]
    t = c["totals"]
    assert t["params_after"] < 0.75 * t["params_before"] and t["output_rel_error"] <= 1e-5
    assert np.isfinite(args.lr)
