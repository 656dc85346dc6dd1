"""The training command end to end (tiny budget), its diagnostics and the ℓ0-hc gates against NumPy references."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from proxgen_jax.train import cli
from proxgen_jax.train.diagnostics import min_effective_step, step_diagnostics, summarize
from proxgen_jax.train.optimizers import HardConcreteGates, build_optimizer


def test_quick_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    res = cli.main(["--quick", "--epochs", "1", "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert "| method |" in printed and "proxgen_adam[lhalf]" in printed and "subgradient_adam[lhalf]" in printed
    with open(out / "results.json") as f:
        saved = json.load(f)
    assert len(saved["runs"]) == 2 and len(saved["summary"]) == 2
    for name in ("curves.png", "tradeoff.png", "diagnostics.png"):
        with open(out / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    runs = {r["config"]["optimizer"]: r for r in res["runs"]}
    steps = runs["proxgen_adam"]["final"]["steps"]
    assert steps == 1347 // 64
    for r in runs.values():
        assert len(r["per_step"]["grad_norm"]) == steps
        # F = f + λR with R ≥ 0: the logged objective is at least the training loss part.
        assert r["objective"][0] >= r["f_train"][0] - 1e-6
        assert 0.1 < r["final"]["test_acc"] <= 1.0
    # The exact prox creates exact zeros; the subgradient method essentially never lands on 0.
    assert runs["proxgen_adam"]["final"]["sparsity"] > 0.05
    assert runs["subgradient_adam"]["final"]["sparsity"] < 0.01


def test_cli_rejects_bad_budget():
    with pytest.raises(SystemExit):
        cli.main(["--epochs", "0", "--no-progress", "--no-plots"])


def _numpy_adam_vhat(grads, b2=0.999):
    v = np.zeros_like(grads[0])
    for g in grads:
        v = b2 * v + (1 - b2) * g ** 2
    return v / (1 - b2 ** len(grads))


@pytest.mark.parametrize("name", ["proxgen_adam", "adam"])
def test_min_effective_step_matches_numpy_adam(name):
    lr = 3e-3
    spec = build_optimizer(name, regularizer="l1", lam=1e-3, lr=lr)
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
                        "bias": jnp.zeros(3, jnp.float32)}}
    state = spec.tx.init(params)
    hist = []
    for _ in range(5):
        g = {"dense": {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
                       "bias": rng.normal(size=3).astype(np.float32) * 5}}
        hist.append(np.concatenate([g["dense"]["bias"].ravel(), g["dense"]["kernel"].ravel()]).astype(np.float64))
        new_upd, state = spec.tx.update(jax.tree.map(jnp.asarray, g), state, params)
        new_params = optax.apply_updates(params, new_upd)
        d = step_diagnostics(params, new_params, g, state, lr)
        params = new_params
    vhat = _numpy_adam_vhat(hist)
    expected = lr / (np.sqrt(vhat.max()) + 1e-8)
    np.testing.assert_allclose(float(min_effective_step(state, lr)), expected, rtol=1e-5)
    np.testing.assert_allclose(float(d["grad_norm"]), np.linalg.norm(hist[-1]), rtol=1e-5)


def test_min_step_of_sgd_is_learning_rate_and_summary():
    spec = build_optimizer("proxgen_sgd", regularizer="l1", lr=0.05)
    state = spec.tx.init({"w": jnp.ones(3)})
    assert float(min_effective_step(state, 0.05)) == pytest.approx(0.05)
    s = summarize({"step_norm": [1.0, 3.0, 2.0], "grad_norm": [0.5, 0.1], "min_step": [1.0] * 10 + [2.0] * 10})
    assert s["D_max_step_norm"] == 3.0 and s["G_max_grad_norm"] == 0.5
    assert s["gamma_min_step"] == 1.0 and s["min_step_trend"] == pytest.approx(2.0)


def test_hard_concrete_gates_against_numpy():
    hc = HardConcreteGates(mask=None, lam=0.1)
    params = {"w": jnp.ones((2, 3))}
    la = np.array([[-10.0, 0.0, 10.0], [-2.5, 2.5, 0.3]], np.float32)
    gates = {"w": jnp.asarray(la)}
    beta, gamma, zeta = 2 / 3, -0.1, 1.1
    p_nonzero = 1 / (1 + np.exp(-(la - beta * np.log(-gamma / zeta))))
    np.testing.assert_allclose(float(hc.penalty(gates)), 0.1 * p_nonzero.sum(), rtol=1e-5)
    det = np.clip(1 / (1 + np.exp(-la)) * (zeta - gamma) + gamma, 0, 1)
    np.testing.assert_allclose(np.asarray(hc.deterministic(params, gates)["w"]), det, rtol=1e-6, atol=1e-7)
    assert det[0, 0] == 0.0 and det[0, 2] == 1.0
    # Monte Carlo: the sampled gate is zero with probability 1 − P(z ≠ 0).
    many = jax.vmap(lambda k: hc.sample(params, gates, k)["w"])(jax.random.split(jax.random.key(0), 4000))
    np.testing.assert_allclose(np.mean(np.asarray(many) != 0, axis=0), p_nonzero, atol=0.03)
