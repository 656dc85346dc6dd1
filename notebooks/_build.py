"""Generates the tutorial notebooks from the Python source below, and optionally executes them.

The notebooks are *generated*: edit the cells here, never the ``.ipynb`` files, then run

    python notebooks/_build.py                 # write every notebook (no outputs)
    python notebooks/_build.py --execute       # write and execute in full mode, storing outputs (plots included)
    python notebooks/_build.py --execute 03    # only the notebooks whose file name contains "03"

``tests/test_notebooks.py`` checks that the committed ``.ipynb`` sources equal what this script generates and
executes every notebook with ``PROXGEN_QUICK=1`` (tiny runs through the same code), so they cannot rot.

Execution uses a throw-away Jupyter kernelspec that runs the *current* interpreter (``sys.executable -m
ipykernel_launcher``), so it works in a fresh virtualenv without ``ipykernel install`` and whatever ``python`` is
first on ``PATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
import time

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_NAME = "proxgen-jax-notebooks"


def md(text: str):
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text: str):
    return nbformat.v4.new_code_cell(textwrap.dedent(text).strip("\n"))


# ----------------------------------------------------------------------------------------------- shared cells
SETUP = code('''
    # ── Setup: make `proxgen_jax` importable ──────────────────────────────────────────────────────────────
    # In Colab, set PROXGEN_GIT_URL to the pip-installable git URL of the proxgen_jax repository, for example
    # "git+https://github.com/OWNER/REPO.git" (your fork or the upstream repository), then Runtime > Run all.
    PROXGEN_GIT_URL = ""  # <-- SET ME in Colab (left empty, the notebook must run inside a checkout)

    import importlib
    import importlib.util
    import os
    import subprocess
    import sys


    def ensure_proxgen_jax() -> str:
        """Installs proxgen_jax if it is not importable: from the checkout (`pip install -e ..`) or the git URL."""
        if importlib.util.find_spec("proxgen_jax") is not None:
            return "proxgen_jax is already importable"
        root = os.path.abspath("..")
        if os.path.isfile(os.path.join(root, "pyproject.toml")) and os.path.isdir(os.path.join(root, "proxgen_jax")):
            subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-e", root])
            sys.path.insert(0, root)  # the editable install is seen by new interpreters; this one needs the path
            return f"installed from the checkout at {root}"
        if PROXGEN_GIT_URL:
            subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", PROXGEN_GIT_URL])
            importlib.invalidate_caches()
            return f"installed from {PROXGEN_GIT_URL}"
        raise RuntimeError("proxgen_jax is not installed: set PROXGEN_GIT_URL at the top of this cell (Colab), "
                           "or run the notebook from the notebooks/ folder of a checkout.")


    print(ensure_proxgen_jax())

    # CI executes every notebook with PROXGEN_QUICK=1: the same code on a sliver of data and a few steps.
    QUICK = os.environ.get("PROXGEN_QUICK") == "1"
''')

IMPORTS = code('''
    %matplotlib inline
    import time

    import jax
    import jax.numpy as jnp
    import matplotlib.pyplot as plt
    import numpy as np
    import optax
    from flax import nnx

    import proxgen_jax as pg

    plt.rcParams.update({"figure.dpi": 72, "axes.grid": True, "grid.alpha": 0.3})
    print(f"jax {jax.__version__} | backend {jax.default_backend()} | devices {jax.devices()} | QUICK = {QUICK}")
''')

FIT = code('''
    from proxgen_jax.train.data import batches, load_digits_split
    from proxgen_jax.train.models import MLP, SmallCNN

    # scikit-learn's 8×8 digits: 1347 training / 450 test images, (N, 8, 8, 1) in [0, 1].
    x_tr, y_tr, x_te, y_te = load_digits_split(seed=0)
    if QUICK:
        x_tr, y_tr, x_te, y_te = x_tr[:256], y_tr[:256], x_te[:256], y_te[:256]
    BATCH = 64


    def make_model(kind: str = "cnn", seed: int = 0) -> nnx.Module:
        if kind == "cnn":
            return SmallCNN(10, rngs=nnx.Rngs(seed))  # conv 16 → conv 32 → pool → linear
        return MLP(64, (64, 64), 10, rngs=nnx.Rngs(seed))  # 64 → 64 → 64 → 10


    def fit(tx, epochs, *, model="cnn", seed=0, regularizer=None, lam=0.0, mask=pg.kernels_only,
            forward=None, finalize=None, measure=None, log_state=None):
        """Trains a fresh model on the digits with the optax transformation `tx`.

        Per epoch it records the mean minibatch loss, the objective F(θ) = f(θ) + λR(θ) on the whole training set
        (f of the parameters actually used in the forward pass), the test accuracy of `finalize(θ)` and the
        fraction of exactly-zero weights selected by `mask`.

        forward:   params → params used in the forward pass (BinaryConnect: sign with a straight-through gradient).
        finalize:  params → params evaluated on the test set (e.g. hard quantisation); default `forward`.
        measure:   params → dict of extra per-epoch numbers.
        log_state: opt_state → dict of scalars recorded at every step (e.g. the λ controller's λ_t).
        """
        graphdef, state = nnx.split(make_model(model, seed), nnx.Param)
        params = nnx.to_pure_dict(state)
        opt_state = tx.init(params)
        fwd = forward or (lambda p: p)
        final = finalize or fwd

        def loss_fn(p, x, y):
            logits = nnx.merge(graphdef, fwd(p))(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        @jax.jit
        def step(p, s, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s, loss, (log_state(s) if log_state else {})

        @jax.jit
        def evaluate(p, x, y):
            logits = nnx.merge(graphdef, p)(x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, jnp.mean(jnp.argmax(logits, -1) == y)

        hist = {"epoch": [], "train_loss": [], "objective": [], "test_acc": [], "sparsity": [], "steps": {}}
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        for epoch in range(1, epochs + 1):
            losses = []
            for xb, yb in batches(x_tr, y_tr, BATCH, rng):
                params, opt_state, loss, logs = step(params, opt_state, xb, yb)
                losses.append(loss)
                for k, v in logs.items():
                    hist["steps"].setdefault(k, []).append(v)
            f_train = float(evaluate(fwd(params), x_tr, y_tr)[0])
            penalty = float(pg.regularization_value(params, regularizer, lam, mask)) if regularizer else 0.0
            hist["epoch"].append(epoch)
            hist["train_loss"].append(float(np.mean(jax.device_get(losses))))
            hist["objective"].append(f_train + penalty)
            hist["test_acc"].append(float(evaluate(final(params), x_te, y_te)[1]))
            hist["sparsity"].append(float(pg.sparsity(params, mask)["total"]))
            for k, v in (measure(params) if measure else {}).items():
                hist.setdefault(k, []).append(float(v))
        hist["steps"] = {k: np.asarray(jax.device_get(v)) for k, v in hist["steps"].items()}
        hist.update(params=params, opt_state=opt_state, graphdef=graphdef, time_s=time.perf_counter() - t0)
        return hist
''')


# ----------------------------------------------------------------------------------------------- 01 quickstart
NB01 = [
    md('''
        # ProxGen quickstart: a sparse CNN in a Flax NNX training loop

        ProxGen (Yun, Lozano & Yang, *Adaptive Proximal Gradient Methods for Structured Neural Networks*, NeurIPS
        2021) trains networks with a
        regularizer that is not smooth — ℓ0, ℓq, ℓ1, MCP, SCAD, quantisation — by taking the *exact* proximal step
        in the metric of an adaptive optimizer (Algorithm 1, Eq. 2):

        $$\\theta_{t+1} = \\operatorname{prox}^{C_t+\\delta I}_{\\alpha_t \\lambda R}\\bigl(\\theta_t - \\alpha_t (C_t+\\delta I)^{-1} m_t\\bigr).$$

        With Adam's preconditioner $C_t = \\sqrt{\\hat v_t}$ and $R = \\|\\theta\\|_{1/2}^{1/2}$ this is one line of optax:

        ```python
        tx = optax.chain(pg.scale_by_adam_precond(), pg.prox_lq(q=0.5))
        ```

        Weights become **exactly zero** during training — no pruning pass afterwards. This notebook trains a small
        CNN on scikit-learn's 8×8 digits with `nnx.Optimizer`, then looks at the sparsity of every layer.
        It runs on a CPU in about a minute; on a GPU/TPU runtime JAX uses the accelerator.
    '''),
    SETUP,
    IMPORTS,
    md('''
        ## Data and model
        `load_digits_split` returns NumPy arrays `(N, 8, 8, 1)`; `SmallCNN` is a Flax NNX module (two 3×3 convs, a
        2×2 max-pool and a linear head).
    '''),
    code('''
        from proxgen_jax.train.data import batches, load_digits_split
        from proxgen_jax.train.models import SmallCNN

        x_tr, y_tr, x_te, y_te = load_digits_split(seed=0)
        if QUICK:
            x_tr, y_tr = x_tr[:256], y_tr[:256]
        print("train", x_tr.shape, "test", x_te.shape)

        model = SmallCNN(10, rngs=nnx.Rngs(0))
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))  # a plain dict of arrays
        for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
            print(f"{jax.tree_util.keystr(path):24s} {p.shape}")
    '''),
    md('''
        ## The optimizer: Adam's preconditioner, then the exact ℓ½ prox

        * `scale_by_adam_precond()` emits the direction $m_t$ **and** the metric $C_t$ (instead of the finished Adam
          step);
        * `prox_lq(q=0.5, lam=λ, learning_rate=α, mask=kernels_only)` takes the step and applies the closed-form ℓ½
          prox in that metric, coordinate by coordinate. `kernels_only` regularises conv/dense kernels and leaves the
          biases alone.

        `nnx.Optimizer(model, tx, wrt=nnx.Param)` wraps it as usual; `optimizer.update(model, grads)` passes the
        parameters to the prox.
    '''),
    code('''
        LR, LAM = 3e-3, 1e-3
        EPOCHS = 2 if QUICK else 20

        tx = optax.chain(pg.scale_by_adam_precond(), pg.prox_lq(q=0.5, lam=LAM, learning_rate=LR, mask=pg.kernels_only))


        def loss_fn(model, x, y):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


        @nnx.jit
        def train_step(model, optimizer, x, y):
            loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
            optimizer.update(model, grads)
            return loss


        @nnx.jit
        def accuracy(model, x, y):
            return jnp.mean(jnp.argmax(model(x), -1) == y)


        def train(tx, epochs, seed=0):
            model = SmallCNN(10, rngs=nnx.Rngs(seed))
            optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
            rng = np.random.default_rng(seed)
            hist = {"loss": [], "acc": [], "sparsity": []}
            for epoch in range(epochs):
                losses = [train_step(model, optimizer, xb, yb) for xb, yb in batches(x_tr, y_tr, 64, rng)]
                hist["loss"].append(float(np.mean(jax.device_get(losses))))
                hist["acc"].append(float(accuracy(model, x_te, y_te)))
                params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
                hist["sparsity"].append(float(pg.sparsity(params, pg.kernels_only)["total"]))
            return model, hist


        t0 = time.perf_counter()
        model, hist = train(tx, EPOCHS)
        print(f"ProxGen ℓ½: {time.perf_counter() - t0:.1f} s, test accuracy {hist['acc'][-1]:.3f}, "
              f"kernel sparsity {hist['sparsity'][-1]:.1%}")
        dense_model, dense_hist = train(optax.adam(LR), EPOCHS)
        print(f"Adam (no regularizer): test accuracy {dense_hist['acc'][-1]:.3f}, "
              f"kernel sparsity {dense_hist['sparsity'][-1]:.1%}")
    '''),
    md('''
        ## Sparsity per layer

        `pg.sparsity(params, mask)` returns the fraction of exactly-zero entries of every selected leaf and the total.
        The zeros are exact (`== 0`), and the biases — outside the mask — are untouched.
    '''),
    code('''
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        per_layer = pg.sparsity(params, pg.kernels_only)
        for name, frac in per_layer.items():
            print(f"{name:28s} {float(frac):6.1%}")

        flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
        n_zero = {k: int((v == 0).sum()) for k, v in flat.items()}
        print("exact zeros per leaf:", n_zero)
        assert all(n_zero[k] == 0 for k in flat if "bias" in k), "biases are outside the mask"
        assert float(per_layer["total"]) > 0, "the ℓ½ prox produces exact zeros"
        assert dense_hist["sparsity"][-1] == 0.0, "plain Adam does not"
    '''),
    md('''
        ## Curves and the learned weights
        Left: the training loss; middle: test accuracy; right: the fraction of zero kernel weights per epoch.
        Below, the head's weight matrix (white = exactly zero).
    '''),
    code('''
        ep = np.arange(1, EPOCHS + 1)
        fig, ax = plt.subplots(1, 3, figsize=(11, 3))
        for h, label in ((hist, "ProxGen ℓ½"), (dense_hist, "Adam")):
            ax[0].plot(ep, h["loss"], label=label)
            ax[1].plot(ep, h["acc"], label=label)
            ax[2].plot(ep, h["sparsity"], label=label)
        for a, t in zip(ax, ("train loss", "test accuracy", "kernel sparsity")):
            a.set_title(t)
            a.set_xlabel("epoch")
        ax[0].legend()
        fig.tight_layout()
        plt.show()

        head = flat[[k for k in flat if "head" in k and "kernel" in k][0]]
        fig, ax = plt.subplots(1, 2, figsize=(11, 2.6), gridspec_kw={"width_ratios": [3, 1]})
        ax[0].imshow((head != 0).T, aspect="auto", cmap="Greys", interpolation="nearest")
        ax[0].set_title(f"head kernel {head.shape}: non-zero entries in black ({(head == 0).mean():.0%} zero)")
        ax[0].set_xlabel("input feature")
        ax[0].set_ylabel("class")
        ax[0].grid(False)
        w = np.concatenate([v.ravel() for k, v in flat.items() if "kernel" in k])
        ax[1].hist(w[w != 0], bins=60)
        ax[1].set_title("non-zero kernel weights")
        fig.tight_layout()
        plt.show()
    '''),
    md('''
        ## Where next
        * `02_sparse_training.ipynb` — ℓ0, ℓ½, ℓ⅔, ℓ1, MCP and SCAD, ProxGen against subgradient training;
        * `03_binary_networks.ipynb` — revised ProxQuant, ProxQuant and BinaryConnect;
        * `04_group_sparsity.ipynb` — pruning whole neurons, Granger causality, a target-sparsity controller;
        * `05_many_devices.ipynb` — the same training sharded over devices.

        Other preconditioners plug in the same way: `pg.scale_by_rmsprop_precond()`, `pg.scale_by_adagrad_precond()`,
        `pg.scale_by_sgd_precond(momentum)`; ready-made chains are `pg.proxgen_adam`, `pg.proxgen_sgd`, ….
    '''),
]


# ----------------------------------------------------------------------------------------------- 02 sparse
NB02 = [
    md('''
        # Sparse training: ProxGen against subgradient training

        The usual way to train with a sparsity penalty in a deep learning library is to add $\\lambda R(\\theta)$ to
        the loss and let autograd differentiate it: the optimizer then sees a *subgradient* of $R$. ProxGen instead
        takes the exact proximal step of $\\alpha_t\\lambda R$ in the optimizer's metric $C_t+\\delta I$. The paper's
        Sec. 4 compares the two with Adam's preconditioner; this notebook repeats that comparison on a small CNN
        and the 8×8 digits, for six regularizers:

        | $R$ | prox in the metric $C_t+\\delta I$ (per coordinate) |
        |---|---|
        | ℓ0 | hard thresholding at $\\sqrt{2\\alpha_t\\lambda/(C_t+\\delta)}$ |
        | ℓ½, ℓ⅔ | closed-form roots of a quartic / cubic |
        | ℓ1 | soft thresholding at $\\alpha_t\\lambda/(C_t+\\delta)$ |
        | MCP, SCAD | firm thresholding, regime chosen per coordinate |

        The subgradient baseline is `subgradient_adam` (Adam on $g_t + \\partial(\\lambda R)(\\theta_t)$), from
        `proxgen_jax.baselines`. For ℓ0 the subgradient is zero almost everywhere, so that baseline is plain Adam.
        λ is set per regularizer (the penalties have different scales); both methods use the same λ and α.
    '''),
    SETUP,
    IMPORTS,
    FIT,
    md('''
        ## The runs
        `pg.proxgen_adam(α, R, λ, mask=kernels_only)` is `optax.chain(scale_by_adam_precond(), proximal_step(R, λ, α))`.
    '''),
    code('''
        from proxgen_jax.baselines import subgradient_adam
        from proxgen_jax.regularizers import L0, L1, MCP, SCAD, Lq

        LR = 3e-3
        EPOCHS = 2 if QUICK else 20
        REGULARIZERS = {  # name: (R, λ)
            "ℓ0": (L0(), 1e-3),
            "ℓ½": (Lq(0.5), 1e-3),
            "ℓ⅔": (Lq(2 / 3), 1e-3),
            "ℓ1": (L1(), 2e-3),
            "MCP": (MCP(3.0), 1e-2),
            "SCAD": (SCAD(3.7), 1e-2),
        }

        runs = {}
        dense = fit(optax.adam(LR), EPOCHS)
        print(f"{'Adam (no regularizer)':24s} acc {dense['test_acc'][-1]:.3f}  {dense['time_s']:.1f} s")
        for name, (reg, lam) in REGULARIZERS.items():
            for method, tx in (("ProxGen", pg.proxgen_adam(LR, reg, lam, mask=pg.kernels_only)),
                               ("subgradient", subgradient_adam(LR, reg, lam, mask=pg.kernels_only))):
                h = fit(tx, EPOCHS, regularizer=reg, lam=lam)
                runs[name, method] = h
                print(f"{name:5s} {method:12s} λ={lam:g}  acc {h['test_acc'][-1]:.3f}  sparsity {h['sparsity'][-1]:6.1%}"
                      f"  F {h['objective'][-1]:.4f}  {h['time_s']:.1f} s")
    '''),
    md('''
        ## Results
        Test accuracy, fraction of exactly-zero kernel weights and the final objective
        $F(\\theta) = f(\\theta) + \\lambda R(\\theta)$ on the training set (lower is better; it is what both methods
        minimise).
    '''),
    code('''
        print(f"{'R':5s} {'λ':>7s} | {'ProxGen acc':>11s} {'sparsity':>9s} {'F':>8s} | {'subgrad acc':>11s} {'sparsity':>9s} {'F':>8s}")
        for name, (reg, lam) in REGULARIZERS.items():
            p, s = runs[name, "ProxGen"], runs[name, "subgradient"]
            print(f"{name:5s} {lam:7.0e} | {p['test_acc'][-1]:11.3f} {p['sparsity'][-1]:9.1%} {p['objective'][-1]:8.4f} |"
                  f" {s['test_acc'][-1]:11.3f} {s['sparsity'][-1]:9.1%} {s['objective'][-1]:8.4f}")
        print(f"dense Adam accuracy: {dense['test_acc'][-1]:.3f}")

        # Exact zeros come from the prox only: a subgradient step lands on 0.0 with probability ~0.
        for name in REGULARIZERS:
            assert runs[name, "ProxGen"]["sparsity"][-1] > 0, name
            assert runs[name, "subgradient"]["sparsity"][-1] < 1e-3, name
    '''),
    code('''
        ep = np.arange(1, EPOCHS + 1)
        fig, axes = plt.subplots(2, 3, figsize=(12, 6))
        for ax, (name, (reg, lam)) in zip(axes.ravel(), REGULARIZERS.items()):
            ax.plot(ep, runs[name, "ProxGen"]["objective"], "-o", ms=3, label="ProxGen (Adam)")
            ax.plot(ep, runs[name, "subgradient"]["objective"], "--s", ms=3, label="subgradient (Adam)")
            ax.set_title(f"{name}, λ = {lam:g}")
            ax.set_yscale("log")
            ax.set_xlabel("epoch")
        axes[0, 0].set_ylabel("F(θ) = f(θ) + λR(θ)")
        axes[1, 0].set_ylabel("F(θ) = f(θ) + λR(θ)")
        axes[0, 0].legend()
        fig.suptitle("objective on the training set")
        fig.tight_layout()
        plt.show()

        names = list(REGULARIZERS)
        xs = np.arange(len(names))
        fig, ax = plt.subplots(1, 2, figsize=(12, 3))
        for off, method in ((-0.2, "ProxGen"), (0.2, "subgradient")):
            ax[0].bar(xs + off, [runs[n, method]["sparsity"][-1] for n in names], 0.4, label=method)
            ax[1].bar(xs + off, [runs[n, method]["test_acc"][-1] for n in names], 0.4, label=method)
        ax[1].axhline(dense["test_acc"][-1], color="k", lw=1, ls=":", label="dense Adam")
        ax[1].set_ylim(0.8, 1.0)
        for a, t in zip(ax, ("fraction of zero kernel weights", "test accuracy")):
            a.set_xticks(xs, names)
            a.set_title(t)
        ax[1].legend(loc="lower right")
        fig.tight_layout()
        plt.show()
    '''),
    md('''
        ## What the weights look like
        ℓ½ with ProxGen leaves a spike at exactly zero and a gap around it (the ℓ½ prox jumps from 0 to a non-zero
        value); the subgradient version pushes small weights towards zero but does not land on it — its step
        $\\lambda q|\\theta|^{q-1}$ grows without bound near 0, so small weights hover around zero instead.
    '''),
    code('''
        def kernel_weights(h):
            return np.concatenate([np.ravel(v) for p, v in jax.tree_util.tree_flatten_with_path(h["params"])[0]
                                   if "kernel" in jax.tree_util.keystr(p)])


        fig, ax = plt.subplots(1, 2, figsize=(12, 3), sharey=True)
        for a, method in zip(ax, ("ProxGen", "subgradient")):
            w = kernel_weights(runs["ℓ½", method])
            a.hist(w, bins=np.linspace(-0.3, 0.3, 121), log=True)
            a.set_title(f"ℓ½, {method}: {np.mean(w == 0):.1%} exactly zero")
            a.set_xlabel("kernel weight")
        fig.tight_layout()
        plt.show()

        print("per-layer sparsity, ProxGen ℓ½:")
        for k, v in pg.sparsity(runs["ℓ½", "ProxGen"]["params"], pg.kernels_only).items():
            print(f"  {k:26s} {float(v):6.1%}")
    '''),
]


# ----------------------------------------------------------------------------------------------- 03 binary
NB03 = [
    md('''
        # Binary networks: revised ProxQuant, ProxQuant and BinaryConnect

        A binary network keeps its weights in $\\{-1, +1\\}$. Three ways to train one:

        * **BinaryConnect** (Courbariaux et al., 2015): real latent weights, the forward pass uses $\\operatorname{sign}(\\theta)$,
          gradients pass straight through, latents are clipped to $[-1, 1]$ — `proxgen_jax.baselines.binarize_params`
          and `clip_latent`;
        * **ProxQuant** (Bai et al., 2019): Adam, then the *Euclidean* prox of the W-shaped regularizer
          $R(\\theta) = \\sum_i \\operatorname{dist}(\\theta_i, \\{-1, 1\\})$ with λ ramped up — `proxgen_jax.baselines.proxquant`;
        * **revised ProxQuant** (ProxGen, Table 2): the same regularizer, its prox taken in Adam's metric
          $C_t+\\delta I$ — `pg.revised_proxquant`.

        All three finish with a hard quantisation `pg.quantize(params, (-1, 1), mask)` (each weight to its nearest
        level). As in those papers, the first and the last layer stay in full precision (`binary_mask`; in this small
        CNN that leaves the middle 3×3×16×32 convolution, 4 608 weights, to binarise). The two
        proximal methods move weights by different amounts per unit of λ (ProxQuant by $\\alpha_t\\lambda_t$,
        ProxGen by $\\alpha_t\\lambda_t/(C_t+\\delta)$), so each gets its own final λ, ramped linearly from 0.
    '''),
    SETUP,
    IMPORTS,
    FIT,
    code('''
        from proxgen_jax.baselines import binarize_params, clip_latent, proxquant
        from proxgen_jax.train.optimizers import binary_mask

        LR = 3e-3
        EPOCHS = 2 if QUICK else 20
        STEPS = EPOCHS * (len(x_tr) // BATCH)
        LAM_REVISED, LAM_PROXQUANT = 3e-2, 3.0

        mask = binary_mask  # kernels of every layer but the first conv and the head
        graphdef, p0 = nnx.split(make_model("cnn"), nnx.Param)
        print({jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_flatten_with_path(mask(nnx.to_pure_dict(p0)))[0]})

        quantize = lambda p: pg.quantize(p, (-1.0, 1.0), mask)


        def on_levels(p):
            """Fraction of the binarised weights already exactly at ±1 (before the final rounding)."""
            flags = jax.tree.leaves(mask(p))
            w = np.concatenate([np.ravel(v) for v, on in zip(jax.tree.leaves(p), flags) if on])
            return {"on_levels": np.mean(np.abs(w) == 1.0)}


        METHODS = {
            "revised ProxQuant": dict(tx=pg.revised_proxquant(LR, q=1.0, lam=optax.linear_schedule(0.0, LAM_REVISED, STEPS),
                                                               mask=mask)),
            "ProxQuant": dict(tx=proxquant(LR, lam_max=LAM_PROXQUANT, ramp_steps=STEPS, mask=mask)),
            "BinaryConnect": dict(tx=optax.chain(optax.adam(LR), clip_latent(1.0, mask=mask)),
                                  forward=lambda p: binarize_params(p, mask)),
            "Adam, then quantize": dict(tx=optax.adam(LR)),
        }
        runs = {}
        for name, kw in METHODS.items():
            runs[name] = fit(kw["tx"], EPOCHS, forward=kw.get("forward"), finalize=quantize, measure=on_levels, mask=mask)
            print(f"{name:20s} binary test accuracy {runs[name]['test_acc'][-1]:.3f}  "
                  f"weights on ±1 before rounding {runs[name]['on_levels'][-1]:6.1%}  {runs[name]['time_s']:.1f} s")
        full = fit(optax.adam(LR), EPOCHS)
        print(f"{'full precision Adam':20s} test accuracy {full['test_acc'][-1]:.3f}")
    '''),
    md('''
        ## Before and after the final hard quantisation
        A method that has already driven its weights onto ±1 loses nothing when they are rounded.
    '''),
    code('''
        @jax.jit
        def accuracy(p):
            return jnp.mean(jnp.argmax(nnx.merge(graphdef, p)(x_te), -1) == y_te)


        print(f"{'method':20s} {'latent/forward':>14s} {'after quantize':>15s}")
        for name, h in runs.items():
            fwd = METHODS[name].get("forward") or (lambda p: p)
            before, after = float(accuracy(fwd(h["params"]))), float(accuracy(quantize(h["params"])))
            print(f"{name:20s} {before:14.3f} {after:15.3f}")
            q = quantize(h["params"])
            for leaf, on, orig in zip(jax.tree.leaves(q), jax.tree.leaves(mask(q)), jax.tree.leaves(h["params"])):
                if on:
                    assert set(np.unique(np.asarray(leaf))) <= {-1.0, 1.0}
                else:
                    np.testing.assert_array_equal(leaf, orig)  # full-precision layers are untouched
    '''),
    code('''
        ep = np.arange(1, EPOCHS + 1)
        fig, ax = plt.subplots(1, 3, figsize=(13, 3.2))
        for name, h in runs.items():
            ax[0].plot(ep, h["test_acc"], "-o", ms=3, label=name)
            ax[1].plot(ep, h["on_levels"], "-o", ms=3, label=name)
        ax[0].axhline(full["test_acc"][-1], color="k", ls=":", lw=1, label="full precision")
        ax[0].set_title("test accuracy of the binarised network")
        ax[1].set_title("fraction of weights exactly at ±1")
        for a in ax[:2]:
            a.set_xlabel("epoch")
        ax[0].legend(fontsize=8)
        bins = np.linspace(-1.05, 1.05, 85)
        for name, h in runs.items():
            if name == "Adam, then quantize":
                continue
            w = np.concatenate([np.ravel(v) for v, on in zip(jax.tree.leaves(h["params"]), jax.tree.leaves(mask(h["params"])))
                                if on])
            ax[2].hist(w, bins=bins, histtype="step", lw=1.5, log=True, label=name)
        ax[2].set_title("latent binarised-layer weights at the end")
        ax[2].legend(fontsize=8)
        fig.tight_layout()
        plt.show()
    '''),
]


# ----------------------------------------------------------------------------------------------- 04 group
NB04 = [
    md('''
        # Group sparsity: pruning whole neurons, Granger causality, a target-sparsity controller

        The group lasso $R(\\theta) = \\sum_g \\|\\theta_g\\|_2$ zeroes whole *groups* of weights at once. With a group
        per column of a Dense kernel, a zero group is a neuron without inputs — it can be removed from the network.
        ProxGen takes the group prox in Adam's diagonal metric $C_t+\\delta I$, where it has no closed form: the group
        is zero iff $\\|z_g (C_{t,g}+\\delta)/\\alpha_t\\|_2 \\le \\lambda$, otherwise a few Newton steps on the group's
        radius solve it (`proxgen_jax.transforms.prox_group.prox_group_l12`).

        1. prune the hidden neurons of an MLP on the digits, and check that the pruned, *smaller* network computes
           exactly the same function;
        2. a small neural Granger-causality study (Tank et al., 2021): one group per (target series, input series);
        3. `target_sparsity`: ask for "60 % of the neurons" instead of choosing λ.
    '''),
    SETUP,
    IMPORTS,
    FIT,
    md('''
        ## 1. Pruning neurons of an MLP
        `group_axes=(0,)` makes one group per column (output neuron) of a Dense kernel `(in, out)`. The mask selects
        the hidden layers' kernels — a zero column in the head would delete a class.
    '''),
    code('''
        from proxgen_jax.baselines import add_subgradient
        from proxgen_jax.regularizers.group_l12 import GroupL12
        from proxgen_jax.transforms.prox_group import prox_group_l12


        def hidden_kernels(params):
            """True for the kernels of the hidden layers (not the head, not the biases)."""
            return jax.tree_util.tree_map_with_path(
                lambda path, _: "hidden" in jax.tree_util.keystr(path) and "kernel" in jax.tree_util.keystr(path), params)


        LR, LAM = 3e-3, 1e-2
        EPOCHS = 2 if QUICK else 30
        neuron_groups = GroupL12(group_axes=(0,))  # ‖W[:, j]‖₂ for every output neuron j

        prox_tx = optax.chain(pg.scale_by_adam_precond(), prox_group_l12(LAM, LR, group_axes=(0,), mask=hidden_kernels))
        subgrad_tx = optax.chain(add_subgradient(neuron_groups, LAM, mask=hidden_kernels), optax.adam(LR))
        groups = {}
        for name, tx in (("ProxGen", prox_tx), ("subgradient", subgrad_tx)):
            groups[name] = h = fit(tx, EPOCHS, model="mlp", regularizer=neuron_groups, lam=LAM, mask=hidden_kernels)
            print(f"{name:12s} test accuracy {h['test_acc'][-1]:.3f}  F {h['objective'][-1]:.4f}  {h['time_s']:.1f} s")
        mlp_dense = fit(optax.adam(LR), EPOCHS, model="mlp")
        print(f"{'dense Adam':12s} test accuracy {mlp_dense['test_acc'][-1]:.3f}")
    '''),
    code('''
        def column_norms(params):
            hidden = params["hidden"]
            return [np.linalg.norm(np.asarray(hidden[k]["kernel"]), axis=0) for k in sorted(hidden, key=int)]


        for name, h in groups.items():
            alive = [int((c > 0).sum()) for c in column_norms(h["params"])]
            print(f"{name:12s} neurons with non-zero inputs per hidden layer: {alive} of [64, 64]")

        fig, ax = plt.subplots(1, 2, figsize=(12, 3), sharey=True)
        for a, (name, h) in zip(ax, groups.items()):
            for i, c in enumerate(column_norms(h["params"])):
                c = np.sort(c)[::-1]
                a.semilogy(np.arange(1, 65), np.maximum(c, 1e-8), "o-", ms=3, label=f"hidden layer {i}")
            a.set_title(f"{name}: sorted column norms ‖W[:, j]‖ (1e-8 = exactly 0)")
            a.set_xlabel("neuron (sorted)")
        ax[0].legend()
        fig.tight_layout()
        plt.show()
    '''),
    md('''
        A neuron $j$ of layer $i$ with a zero column outputs the constant $\\mathrm{relu}(b_j)$. Folding that constant
        into the next layer's bias ($b' \\mathrel{+}= \\mathrm{relu}(b_j) W_{i+1}[j, :]$) and deleting the neuron gives a
        smaller dense network with the same logits — checked below in NumPy, independently of Flax.
    '''),
    code('''
        def prune(params):
            """Removes the neurons with zero incoming weights; returns [(W, b), ...] of a smaller MLP (NumPy)."""
            layers = [params["hidden"][k] for k in sorted(params["hidden"], key=int)] + [params["head"]]
            layers = [(np.asarray(l["kernel"], np.float64), np.asarray(l["bias"], np.float64)) for l in layers]
            out, keep_in = [], np.arange(layers[0][0].shape[0])
            for i, (w, b) in enumerate(layers):
                w = w[keep_in]
                if i == len(layers) - 1:
                    out.append((w, b))
                    break
                dead = np.all(w == 0, axis=0)
                nxt_w, nxt_b = layers[i + 1]
                layers[i + 1] = (nxt_w, nxt_b + np.maximum(b[dead], 0) @ nxt_w[dead])  # fold the constant outputs
                out.append((w[:, ~dead], b[~dead]))
                keep_in = np.flatnonzero(~dead)
            return out


        def numpy_mlp(layers, x):
            h = x.reshape(len(x), -1).astype(np.float64)
            for w, b in layers[:-1]:
                h = np.maximum(h @ w + b, 0)
            return h @ layers[-1][0] + layers[-1][1]


        small = prune(groups["ProxGen"]["params"])
        full_logits = np.asarray(nnx.merge(groups["ProxGen"]["graphdef"], groups["ProxGen"]["params"])(x_te), np.float64)
        small_logits = numpy_mlp(small, x_te)
        n_full = sum(np.size(v) for v in jax.tree.leaves(groups["ProxGen"]["params"]))
        n_small = sum(w.size + b.size for w, b in small)
        print("pruned widths:", [w.shape[1] for w, _ in small[:-1]], f"| parameters {n_full} → {n_small}")
        print(f"max |logit difference| = {np.max(np.abs(full_logits - small_logits)):.2e}")
        np.testing.assert_allclose(small_logits, full_logits, atol=1e-4, rtol=1e-4)
        assert (np.argmax(small_logits, 1) == np.argmax(full_logits, 1)).all()
    '''),
    md('''
        ## 2. Neural Granger causality on Lorenz-96
        Lorenz-96 with $p$ variables, $\\dot x_i = (x_{i+1} - x_{i-2})x_{i-1} - x_i + F$: series $i$ is driven by
        $i-2, i-1, i, i+1$. A component-wise MLP (cMLP, Tank et al. 2021) predicts $x_i(t)$ from the last $K$ values
        of every series; the first-layer weights from series $j$ to model $i$, $W_1[i, j] \\in \\mathbb R^{K\\times H}$,
        form one group. Series $j$ Granger-causes $i$ iff that group is non-zero.
        All $p$ models are trained together (one array with a leading target axis) by full-batch ProxGen Adam.
    '''),
    code('''
        def lorenz96(p=10, forcing=10.0, T=1000, dt=0.05, burn=300, seed=0):
            """RK4 integration of Lorenz-96 plus a little observation noise, standardised; (T, p)."""
            rng = np.random.default_rng(seed)
            f = lambda x: (np.roll(x, -1) - np.roll(x, 2)) * np.roll(x, 1) - x + forcing
            x, out = rng.normal(0, 0.1, p), []
            for t in range(T + burn):
                k1 = f(x); k2 = f(x + dt / 2 * k1); k3 = f(x + dt / 2 * k2); k4 = f(x + dt * k3)
                x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
                out.append(x)
            X = np.asarray(out[burn:]) + rng.normal(0, 0.1, (T, p))
            return ((X - X.mean(0)) / X.std(0)).astype(np.float32)


        P, K, H = 10, 5, 10
        series = lorenz96(P, T=300 if QUICK else 1000)
        true_gc = np.zeros((P, P), bool)
        for i in range(P):
            true_gc[i, [(i - 2) % P, (i - 1) % P, i, (i + 1) % P]] = True
        windows = np.stack([series[t - K:t] for t in range(K, len(series))])  # (N, K, P): the past K steps
        targets = series[K:]  # (N, P)


        def cmlp(params, x):
            """All P component MLPs at once: x (N, K, P) → predictions (N, P)."""
            h = jax.nn.relu(jnp.einsum("nkj,ijkh->nih", x, params["w1"]) + params["b1"])
            return jnp.einsum("nih,ih->ni", h, params["w2"]) + params["b2"]


        def gc_loss(params):
            return jnp.mean((cmlp(params, windows) - targets) ** 2)


        def train_gc(lam, steps, seed=0):
            k1, k2 = jax.random.split(jax.random.key(seed))
            params = {"w1": jax.random.normal(k1, (P, P, K, H)) / np.sqrt(P * K), "b1": jnp.zeros((P, H)),
                      "w2": jax.random.normal(k2, (P, H)) / np.sqrt(H), "b2": jnp.zeros((P,))}
            only_w1 = {"w1": True, "b1": False, "w2": False, "b2": False}
            tx = optax.chain(pg.scale_by_adam_precond(), prox_group_l12(lam, 1e-3, group_axes=(2, 3), mask=only_w1))

            @jax.jit
            def run(params):
                def body(carry, _):
                    params, state = carry
                    loss, g = jax.value_and_grad(gc_loss)(params)
                    u, state = tx.update(g, state, params)
                    return (optax.apply_updates(params, u), state), loss
                (params, _), losses = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
                return params, losses

            return run(params)


        GC_STEPS = 100 if QUICK else 3000  # full batch, Adam's metric, α = 1e-3
        gc_runs = {}
        for lam in (0.0, 0.03, 0.1, 0.3):
            params, losses = train_gc(lam, GC_STEPS)
            norms = np.linalg.norm(np.asarray(params["w1"]).reshape(P, P, -1), axis=-1)
            est = norms > 0
            tpr = (est & true_gc).sum() / true_gc.sum()
            fpr = (est & ~true_gc).sum() / (~true_gc).sum()
            gc_runs[lam] = dict(norms=norms, losses=np.asarray(losses), tpr=tpr, fpr=fpr)
            print(f"λ = {lam:<6g} final MSE {float(losses[-1]):.4f} | edges kept {est.sum():3d} of {P * P}"
                  f" | true-positive rate {tpr:.2f}, false-positive rate {fpr:.2f}")
    '''),
    code('''
        fig, ax = plt.subplots(1, len(gc_runs) + 1, figsize=(15, 3))
        ax[0].imshow(true_gc, cmap="Greys")
        ax[0].set_title("true Granger graph")
        for a, (lam, r) in zip(ax[1:], gc_runs.items()):
            a.imshow(r["norms"] > 0, cmap="Greys")
            a.set_title(f"‖W1[i, j]‖ > 0, λ = {lam:g}\\nTPR {r['tpr']:.2f}, FPR {r['fpr']:.2f}")
        for a in ax:
            a.set_xlabel("input series j")
            a.grid(False)
        ax[0].set_ylabel("target series i")
        fig.tight_layout()
        plt.show()
    '''),
    md('''
        Larger λ removes more edges, non-causal ones first (the false-positive rate falls faster than the true-positive
        rate), but in this short run no single λ recovers the graph exactly. Tank et al. use a hierarchical penalty
        over lags, wider networks and proximal gradient descent with line search run to convergence; the point here is
        the mechanics: one `prox_group_l12` with `group_axes=(2, 3)` gives one group per (target, input series).
    '''),
    md('''
        ## 3. Asking for a sparsity instead of a λ
        `target_sparsity(R, target=s*, ramp_steps=T)` replaces the prox link and sets $\\lambda_t$ by a PI controller on
        the measured sparsity (for a group regularizer: the fraction of zero *groups*), following a cubic ramp of
        the target. Here: 60 % of the hidden neurons of the same MLP. $\\lambda_t$ and the sparsity are read from
        the optimizer state at every step with `target_sparsity_info`.
    '''),
    code('''
        from proxgen_jax.transforms.target_sparsity import target_sparsity, target_sparsity_info

        TARGET = 0.6
        steps_total = EPOCHS * (len(x_tr) // BATCH)
        ctrl_tx = optax.chain(pg.scale_by_adam_precond(),
                              target_sparsity(neuron_groups, target=TARGET, ramp_steps=int(0.6 * steps_total),
                                              learning_rate=LR, mask=hidden_kernels))
        ctrl = fit(ctrl_tx, EPOCHS, model="mlp", mask=hidden_kernels,
                   log_state=lambda s: {k: target_sparsity_info(s)[k] for k in ("lam", "sparsity", "target")})
        alive = [int((c > 0).sum()) for c in column_norms(ctrl["params"])]
        print(f"test accuracy {ctrl['test_acc'][-1]:.3f} | final neuron sparsity {ctrl['steps']['sparsity'][-1]:.1%}"
              f" (target {TARGET:.0%}) | neurons alive per layer {alive} | final λ {ctrl['steps']['lam'][-1]:.2e}")

        s = ctrl["steps"]
        fig, ax = plt.subplots(1, 2, figsize=(12, 3))
        ax[0].semilogy(s["lam"])
        ax[0].set_title("λ_t chosen by the controller")
        ax[1].plot(s["sparsity"], label="fraction of zero neurons")
        ax[1].plot(s["target"], "--", label="ramped target")
        ax[1].set_title("sparsity")
        ax[1].legend()
        for a in ax:
            a.set_xlabel("step")
        fig.tight_layout()
        plt.show()
    '''),
]


# ----------------------------------------------------------------------------------------------- 05 devices
NB05 = [
    md('''
        # Many devices: the same ProxGen training sharded over devices

        ProxGen's update is elementwise given the gradient (the prox acts coordinate by coordinate, or group by group),
        so data parallelism needs nothing special: average the gradients over the devices and every device applies
        the same step. Two ways in JAX:

        1. **`jax.jit` with shardings** — a `Mesh` of the devices, the batch split over them
           (`NamedSharding(mesh, P("data"))`), parameters and optimizer state replicated; XLA inserts the all-reduce;
        2. **`jax.pmap`** — one replica per device, gradients averaged with `jax.lax.pmean`.

        Both are compared with a single-device run on the same global batches. On a CPU runtime the first cell asks XLA
        for 8 host devices (it must run before `jax` is imported; restart the runtime if it was). On a GPU/TPU runtime
        the real devices are used.
    '''),
    code('''
        import os
        import sys

        FLAG = "--xla_force_host_platform_device_count=8"  # 8 CPU "devices"; no effect on GPU/TPU devices
        if "jax" in sys.modules:
            print("jax is already imported: restart the runtime to get 8 CPU devices")
        elif FLAG not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FLAG).strip()
    '''),
    SETUP,
    IMPORTS,
    code('''
        from jax.sharding import Mesh, NamedSharding
        from jax.sharding import PartitionSpec as P

        from proxgen_jax.train.data import load_digits_split
        from proxgen_jax.train.models import SmallCNN

        # Full float32 matmuls (TPUs default to bfloat16 passes), so that the runs can be compared to rounding level.
        jax.config.update("jax_default_matmul_precision", "highest")
        devices = jax.devices()
        N_DEV = len(devices)
        mesh = Mesh(np.array(devices), ("data",))
        GLOBAL_BATCH = 64 if 64 % N_DEV == 0 else 8 * N_DEV
        STEPS = 12 if QUICK else 300
        print(f"{N_DEV} devices, global batch {GLOBAL_BATCH} = {N_DEV} × {GLOBAL_BATCH // N_DEV}, {STEPS} steps")

        x_tr, y_tr, x_te, y_te = load_digits_split(seed=0)
        rng = np.random.default_rng(0)
        batch_idx = [rng.choice(len(x_tr), GLOBAL_BATCH, replace=False) for _ in range(STEPS)]  # the same for all runs

        graphdef, state = nnx.split(SmallCNN(10, rngs=nnx.Rngs(0)), nnx.Param)
        params0 = nnx.to_pure_dict(state)
        tx = optax.chain(pg.scale_by_adam_precond(), pg.prox_lq(q=0.5, lam=1e-3, learning_rate=3e-3, mask=pg.kernels_only))


        def loss_fn(p, x, y):
            return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, p)(x), y).mean()


        def step(p, s, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s, loss


        def run(step_fn, params, opt_state, put_batch):
            """Trains for STEPS steps; returns the final params and state, the losses and ms per step."""
            losses, t0 = [], None
            for i, idx in enumerate(batch_idx):
                if i == 1:
                    t0 = time.perf_counter()  # time after the first (compiling) step
                params, opt_state, loss = step_fn(params, opt_state, *put_batch(x_tr[idx], y_tr[idx]))
                # Wait for every step: on simulated CPU devices, queueing many collective steps can starve XLA's
                # thread pool (a rendezvous timeout); on real devices this costs little at this size.
                losses.append(float(np.mean(loss)))
            ms = 1e3 * (time.perf_counter() - t0) / max(len(batch_idx) - 1, 1)
            return dict(params=params, state=opt_state, losses=np.asarray(losses), ms=ms)
    '''),
    md('''
        ## Reference: one device, the whole batch
    '''),
    code('''
        dev0 = devices[0]
        single_step = jax.jit(step)
        on_dev0 = lambda x, y: (jax.device_put(x, dev0), jax.device_put(y, dev0))
        single = run(single_step, jax.device_put(params0, dev0), jax.device_put(tx.init(params0), dev0), on_dev0)
        print(f"single device: final loss {single['losses'][-1]:.4f}, {single['ms']:.1f} ms/step")
    '''),
    md('''
        ## 1. `jax.jit` over a mesh: batch sharded, parameters replicated
    '''),
    code('''
        replicated = NamedSharding(mesh, P())
        batch_sharded = NamedSharding(mesh, P("data"))
        sharded_step = jax.jit(step, in_shardings=(replicated, replicated, batch_sharded, batch_sharded),
                               out_shardings=(replicated, replicated, replicated))
        on_mesh = lambda x, y: (jax.device_put(x, batch_sharded), jax.device_put(y, batch_sharded))

        xb = on_mesh(x_tr[batch_idx[0]], y_tr[batch_idx[0]])[0]
        print("batch", xb.shape, "→ per-device shards", sorted({s.data.shape for s in xb.addressable_shards}),
              "on", len(xb.sharding.device_set), "devices")

        sharded = run(sharded_step, jax.device_put(params0, replicated), jax.device_put(tx.init(params0), replicated),
                      on_mesh)
        leaf = jax.tree.leaves(sharded["params"])[0]
        print(f"sharded jit: final loss {sharded['losses'][-1]:.4f}, {sharded['ms']:.1f} ms/step; params replicated:",
              leaf.sharding.is_fully_replicated)
    '''),
    md('''
        ## 2. `jax.pmap`: one replica per device, `pmean` of the gradients
    '''),
    code('''
        def pmap_step(p, s, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
            grads, loss = jax.lax.pmean((grads, loss), axis_name="data")
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s, loss


        pmapped_step = jax.pmap(pmap_step, axis_name="data")
        replicate = lambda tree: jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (N_DEV, *np.shape(a))), tree)
        split = lambda x, y: (x.reshape(N_DEV, -1, *x.shape[1:]), y.reshape(N_DEV, -1))
        pmapped = run(pmapped_step, replicate(params0), replicate(tx.init(params0)), split)
        spread = max(float(np.max(np.abs(np.asarray(a) - np.asarray(a)[:1]))) for a in jax.tree.leaves(pmapped["params"]))
        print(f"pmap: final loss {pmapped['losses'][-1]:.4f}, {pmapped['ms']:.1f} ms/step; "
              f"max difference between replicas {spread:.1e}")
        first = lambda tree: jax.tree.map(lambda a: a[0], tree)
        pmapped.update(params=first(pmapped["params"]), state=first(pmapped["state"]))
    '''),
    md('''
        ## The three agree
        **One step** from the same parameters and optimizer state gives the same result up to float rounding (the
        gradient is summed in a different order by an all-reduce). **Whole runs** then drift apart slowly: the ℓ½ prox
        is discontinuous (a weight at the threshold jumps between 0 and a non-zero value) and training is chaotic, so
        rounding-level differences grow — as they do between two GPUs. Loss, sparsity and accuracy still agree.
    '''),
    code('''
        def compare(a, b):
            """Largest |difference| and number of entries that are zero in one tree but not in the other."""
            la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
            diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(la, lb))
            flips = sum(int(np.sum((np.asarray(x) == 0) != (np.asarray(y) == 0))) for x, y in zip(la, lb))
            return diff, flips


        def one_step_each(params, opt_state, idx):
            x, y = x_tr[idx], y_tr[idx]
            ref = single_step(params, opt_state, *on_dev0(x, y))[0]
            sh = sharded_step(jax.device_put(params, replicated), jax.device_put(opt_state, replicated), *on_mesh(x, y))[0]
            pm = first(pmapped_step(replicate(params), replicate(opt_state), *split(x, y))[0])
            return {"sharded jit": compare(ref, sh), "pmap": compare(ref, pm)}


        checks = {"the first step": one_step_each(params0, tx.init(params0), batch_idx[0]),
                  "a step from the final single-device state": one_step_each(single["params"], single["state"],
                                                                             batch_idx[-1])}
        for where, res in checks.items():
            for name, (diff, flips) in res.items():
                print(f"{where}, {name} vs one device: max |Δθ| = {diff:.1e}, zero/non-zero flips {flips}")
                assert diff < 1e-5 and flips == 0, (where, name, diff, flips)


        @jax.jit
        def accuracy(p):
            return jnp.mean(jnp.argmax(nnx.merge(graphdef, p)(x_te), -1) == y_te)


        n_params = sum(np.size(v) for v in jax.tree.leaves(params0))
        ref_sp, ref_acc = float(pg.sparsity(single["params"], pg.kernels_only)["total"]), float(accuracy(single["params"]))
        print(f"\\nafter {STEPS} steps: single device: kernel sparsity {ref_sp:.2%}, test accuracy {ref_acc:.3f}")
        for name, r in (("sharded jit", sharded), ("pmap", pmapped)):
            diff, flips = compare(single["params"], r["params"])
            sp, acc = float(pg.sparsity(r["params"], pg.kernels_only)["total"]), float(accuracy(r["params"]))
            print(f"{name}: kernel sparsity {sp:.2%}, test accuracy {acc:.3f}; max |Δθ| = {diff:.1e}, flips {flips} of "
                  f"{n_params}, max |Δloss| over the run {np.max(np.abs(r['losses'] - single['losses'])):.1e}")
            assert abs(sp - ref_sp) < 0.01 and abs(acc - ref_acc) < 0.02, (name, sp, acc)

        plt.figure(figsize=(7, 3))
        for name, r, ls in (("single device", single, "-"), ("sharded jit", sharded, "--"), ("pmap", pmapped, ":")):
            plt.plot(r["losses"], ls, label=f"{name} ({r['ms']:.1f} ms/step)")
        plt.xlabel("step")
        plt.ylabel("minibatch loss")
        plt.yscale("log")
        plt.legend()
        plt.tight_layout()
        plt.show()
    '''),
    md('''
        On 8 simulated CPU devices (which share the machine's cores) the sharded runs are *slower* than one device: the
        point here is equality, not speed. On a multi-chip TPU/GPU runtime the same cells spread the batch over real
        chips. Sharding the parameters and optimizer state as well (FSDP-style, `NamedSharding(mesh, P("data", None))`
        on the first axis of every large leaf) also works with every ProxGen transformation — their updates are
        elementwise and need no communication; see `tests/scripts/data_parallel.py`.
    '''),
]


# ----------------------------------------------------------------------------------------------- machinery
NOTEBOOKS = {
    "01_quickstart.ipynb": NB01,
    "02_sparse_training.ipynb": NB02,
    "03_binary_networks.ipynb": NB03,
    "04_group_sparsity.ipynb": NB04,
    "05_many_devices.ipynb": NB05,
}

METADATA = {
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
    "colab": {"provenance": []},
}


def build(name: str):
    """The notebook ``name`` (a key of :data:`NOTEBOOKS`) without outputs, with deterministic cell ids."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = nbformat.from_dict(json.loads(json.dumps(METADATA)))
    for i, cell in enumerate(NOTEBOOKS[name]):
        c = nbformat.from_dict(json.loads(json.dumps(cell)))
        c["id"] = f"{name[:2]}-cell-{i:02d}"
        nb.cells.append(c)
    return nb


def execute(nb, *, quick: bool, cwd: str = HERE, timeout: int = 1800, env: dict | None = None):
    """Executes ``nb`` in place in a fresh kernel of this interpreter (``PROXGEN_QUICK=1`` when ``quick``).

    Raises ``nbclient.exceptions.CellExecutionError`` on the first failing cell.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    env = dict(os.environ if env is None else env)
    env.pop("XLA_FLAGS", None)  # notebook 05 sets its own device count
    env.pop("PROXGEN_QUICK", None)
    if quick:
        env["PROXGEN_QUICK"] = "1"
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    with tempfile.TemporaryDirectory() as tmp:
        spec_dir = os.path.join(tmp, KERNEL_NAME)
        os.makedirs(spec_dir)
        with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
            json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                       "display_name": "proxgen_jax notebooks", "language": "python"}, f)
        km = AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[tmp]))
        client = NotebookClient(nb, km=km, kernel_name=KERNEL_NAME, timeout=timeout, record_timing=False,
                                resources={"metadata": {"path": cwd}})
        client.execute(env=env)
    nb.metadata = nbformat.from_dict(json.loads(json.dumps(METADATA)))  # keep the Colab-friendly kernelspec
    return nb


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="substrings of notebook file names (default: all)")
    ap.add_argument("--execute", action="store_true", help="execute and store the outputs")
    ap.add_argument("--quick", action="store_true", help="execute with PROXGEN_QUICK=1 (needs --out)")
    ap.add_argument("--out", default=HERE, help="output folder (default: notebooks/)")
    args = ap.parse_args(argv)
    if args.quick and os.path.abspath(args.out) == HERE:
        ap.error("--quick outputs are not for committing: pass --out DIR")
    os.makedirs(args.out, exist_ok=True)
    for name in NOTEBOOKS:
        if args.names and not any(s in name for s in args.names):
            continue
        nb = build(name)
        if args.execute:
            t0 = time.perf_counter()
            execute(nb, quick=args.quick)
            print(f"{name}: executed in {time.perf_counter() - t0:.0f} s", flush=True)
        path = os.path.join(args.out, name)
        nbformat.write(nb, path)
        print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB)", flush=True)


if __name__ == "__main__":
    main()
