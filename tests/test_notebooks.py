"""The tutorial notebooks cannot rot: they are generated from ``notebooks/_build.py`` and executed here.

* the committed ``.ipynb`` cells are exactly what ``_build.py`` generates (edit the builder, not the JSON);
* the committed copies carry the outputs of a full (non-quick) run, without errors, with plots, under 1 MB;
* every notebook runs top to bottom with ``PROXGEN_QUICK=1`` in a fresh kernel of this interpreter (no
  registered kernelspec needed). The notebooks assert their own claims as they go — exact zeros from the prox
  and none from subgradient training, binarised weights in {−1, +1}, a pruned MLP computing the same logits
  (checked in NumPy), sharded and ``pmap`` training equal to one device — so a failing claim fails the test.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB_DIR = os.path.join(ROOT, "notebooks")


def _load_builder():
    spec = importlib.util.spec_from_file_location("proxgen_notebooks_build", os.path.join(NB_DIR, "_build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


builder = _load_builder()
NAMES = sorted(builder.NOTEBOOKS)


def _read(name):
    return nbformat.read(os.path.join(NB_DIR, name), as_version=4)


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def test_every_notebook_is_listed():
    on_disk = sorted(f for f in os.listdir(NB_DIR) if f.endswith(".ipynb"))
    assert on_disk == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_committed_sources_match_builder(name):
    committed, built = _read(name), builder.build(name)
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in built.cells], (
        f"{name} differs from notebooks/_build.py: edit the builder and run `python notebooks/_build.py --execute`")
    assert committed.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("name", NAMES)
def test_committed_outputs_are_a_full_run(name):
    assert os.path.getsize(os.path.join(NB_DIR, name)) < 1_000_000
    nb = _read(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "every code cell was executed"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert any("QUICK = False" in _stdout(c) for c in code), "outputs come from a full run, not PROXGEN_QUICK=1"
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs), "plots are stored"
    setup = next(c for c in code if "PROXGEN_GIT_URL =" in c.source)
    assert 'PROXGEN_GIT_URL = ""' in setup.source, "no repository URL is baked in: the user sets it"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_quick_mode(name):
    nb = builder.execute(_read(name), quick=True, cwd=NB_DIR, timeout=600)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert any("QUICK = True" in _stdout(c) for c in code)
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)
