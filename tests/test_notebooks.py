"""The tutorial notebooks cannot rot: each is a jupytext pair, and each is executed here.

* every ``notebooks/NN_name.py`` (jupytext percent format: the source, linted and duplicate-checked like the rest)
  has an ``NN_name.ipynb`` twin with exactly its cells, and every ``.ipynb`` has its ``.py``
  (``jupytext --sync notebooks/NN_name.py`` after editing the source; see notebooks/README.md);
* the committed ``.ipynb`` carry the outputs of a full (non-quick) run, without errors, with plots, under 1 MB;
* every notebook's source runs top to bottom with ``PROXGEN_QUICK=1`` in a fresh kernel of this interpreter (no
  registered kernelspec needed). The notebooks assert their own claims as they go — exact zeros from the prox
  and none from subgradient training, binarised weights in {−1, +1}, a pruned MLP computing the same logits
  (checked in NumPy), sharded and ``pmap`` training equal to one device — so a failing claim fails the test.

New notebooks are picked up by name (``NN_*.py``); they follow the same conventions (a setup cell with
``PROXGEN_GIT_URL = ""``, a printed ``QUICK = ...``, at least one plot).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile

import pytest

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")
PATTERN = re.compile(r"\d\d_\w+")
NAMES = sorted(f[:-3] for f in os.listdir(NB_DIR) if f.endswith(".py") and PATTERN.fullmatch(f[:-3]))
KERNEL_NAME = "proxgen-jax-notebooks"


def _source(name):
    return jupytext.read(os.path.join(NB_DIR, name + ".py"))


def _committed(name):
    return nbformat.read(os.path.join(NB_DIR, name + ".ipynb"), as_version=4)


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _has_plot(cells) -> bool:
    return any("image/png" in o.get("data", {}) for c in cells for o in c.outputs)


def _execute(nb, *, quick: bool, timeout: int = 600):
    """Executes ``nb`` in place in a fresh kernel of this interpreter, with ``PROXGEN_QUICK=1`` when ``quick``.

    The kernelspec is a throw-away one running ``sys.executable -m ipykernel_launcher``, so it does not depend on
    which ``python`` is first on ``PATH``. Raises ``nbclient.exceptions.CellExecutionError`` on a failing cell.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # notebook 05 asks for its own device count
    env.pop("PROXGEN_QUICK", None)
    if quick:
        env["PROXGEN_QUICK"] = "1"
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, KERNEL_NAME))
        with open(os.path.join(tmp, KERNEL_NAME, "kernel.json"), "w") as f:
            json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                       "display_name": "proxgen_jax notebooks", "language": "python"}, f)
        km = AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[tmp]))
        client = NotebookClient(nb, km=km, kernel_name=KERNEL_NAME, timeout=timeout, record_timing=False,
                                resources={"metadata": {"path": NB_DIR}})
        client.execute(env=env)
    return nb


def test_every_notebook_is_a_pair():
    assert NAMES, "no notebooks/NN_name.py found"
    ipynb = sorted(f[:-6] for f in os.listdir(NB_DIR) if f.endswith(".ipynb"))
    assert ipynb == NAMES, "every notebooks/NN_name.py needs its .ipynb and back: run `jupytext --sync` on it"


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_the_source_cells(name):
    committed, source = _committed(name), _source(name)
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in source.cells], (
        f"notebooks/{name}.ipynb differs from its source {name}.py: run `jupytext --sync notebooks/{name}.py` "
        "(and re-execute it, see notebooks/README.md)")
    assert committed.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NAMES)
def test_committed_outputs_are_a_full_run(name):
    assert os.path.getsize(os.path.join(NB_DIR, name + ".ipynb")) < 1_000_000
    code = _code_cells(_committed(name))
    assert all(c.execution_count is not None for c in code), "every code cell was executed"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert any("QUICK = False" in _stdout(c) for c in code), "outputs come from a full run, not PROXGEN_QUICK=1"
    assert _has_plot(code), "plots are stored"
    setup = next(c for c in code if "PROXGEN_GIT_URL =" in c.source)
    assert 'PROXGEN_GIT_URL = ""' in setup.source, "no repository URL is baked in: the user sets it"


# CI (≤ 10 min on 2 cores) executes the compaction notebook; the others' code paths are
# the package's (tested on their own), and `-m slow` executes them too.
IN_DEFAULT_RUN = {"06_compaction"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in IN_DEFAULT_RUN else [pytest.mark.slow])
                                  for n in NAMES])
def test_notebook_runs_in_quick_mode(name):
    code = _code_cells(_execute(_source(name), quick=True))
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert any("QUICK = True" in _stdout(c) for c in code)
    assert _has_plot(code)
