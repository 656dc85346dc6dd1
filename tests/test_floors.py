"""The house of floors: no module imports from a higher floor, and every module imports on its own.

``FLOORS`` is the one table to edit when a package moves (lowest floor first). A module belongs to the longest
prefix listed; a module that matches none fails the test until it is given a floor. The package ``__init__``
re-exports everything and is exempt — which also makes ``import proxgen_jax`` / ``from proxgen_jax import name``
(a name that is not a submodule) an import from the top floor when a package module does it.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

FLOORS = {
    # 0: tree plumbing and validation
    "proxgen_jax._validation": 0,
    "proxgen_jax._tree": 0,
    # 1: pure math
    "proxgen_jax.regularizers": 1,
    "proxgen_jax.solvers": 1,
    # 2: optax transformations
    "proxgen_jax.preconditioners": 2,
    "proxgen_jax.transforms": 2,
    # 3: ready optimizers, measurements, baselines, compaction
    "proxgen_jax.aliases": 3,
    "proxgen_jax.metrics": 3,
    "proxgen_jax.baselines": 3,
    "proxgen_jax.compaction": 3,
    # 4: training helpers and the CLI
    "proxgen_jax.train": 4,
}
TOP = max(FLOORS.values()) + 1  # the package __init__
# Imports forbidden within a floor: (importer prefix, imported prefix). Transforms may import the preconditioners'
# output type; preconditioners never import transforms.
FORBIDDEN_SIDEWAYS = {("proxgen_jax.preconditioners", "proxgen_jax.transforms")}

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "proxgen_jax"


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor_of(module: str) -> int | None:
    if module == "proxgen_jax":
        return TOP
    matches = [k for k in FLOORS if module == k or module.startswith(k + ".")]
    return FLOORS[max(matches, key=len)] if matches else None


def prefix_of(module: str) -> str | None:
    matches = [k for k in FLOORS if module == k or module.startswith(k + ".")]
    return max(matches, key=len) if matches else None


def imported_modules(module: str, path: pathlib.Path) -> list[tuple[int, str]]:
    """``(line, target)`` for every import of a ``proxgen_jax`` module anywhere in the file (lazy ones too)."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "proxgen_jax"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            if base.split(".")[0] != "proxgen_jax":
                continue
            for alias in node.names:  # `from A import b` imports A.b when b is a submodule, else A itself
                sub = f"{base}.{alias.name}"
                out.append((node.lineno, sub if sub in MODULES else base))
    return out


def violations() -> list[str]:
    found = []
    for module, path in MODULES.items():
        if module == "proxgen_jax":
            continue
        own, own_prefix = floor_of(module), prefix_of(module)
        for line, target in imported_modules(module, path):
            theirs, their_prefix = floor_of(target), prefix_of(target)
            where = f"{path.relative_to(ROOT)}:{line}"
            if theirs is None:
                found.append(f"{where}: {target} has no floor in FLOORS")
            elif theirs > own:
                found.append(f"{where}: {module} (floor {own}) imports {target} (floor {theirs})")
            elif (own_prefix, their_prefix) in FORBIDDEN_SIDEWAYS:
                found.append(f"{where}: {module} imports {target} ({own_prefix} must not import {their_prefix})")
    return found


def test_every_module_has_a_floor():
    missing = [m for m in MODULES if m != "proxgen_jax" and floor_of(m) is None]
    assert not missing, f"give these modules a floor in FLOORS: {missing}"


def test_no_module_imports_from_a_higher_floor():
    found = violations()
    assert not found, "imports that run upstairs:\n" + "\n".join(found)


def test_the_walker_sees_imports_of_every_kind(tmp_path):
    """The checker itself: absolute, relative, lazy and package-level imports are all found (it can fail)."""
    mod = "proxgen_jax.regularizers.fake"
    src = ("import proxgen_jax.aliases\nfrom proxgen_jax.transforms import prox_l1\n"
           "from . import l1\ndef f():\n    from proxgen_jax import kernels_only\n")
    path = tmp_path / "fake.py"
    path.write_text(src)
    targets = [t for _, t in imported_modules(mod, path)]
    assert targets == ["proxgen_jax.aliases", "proxgen_jax.transforms", "proxgen_jax.regularizers.l1", "proxgen_jax"]
    assert [floor_of(t) for t in targets] == [3, 2, 1, TOP]


# Each module in turn, with every proxgen_jax module purged from sys.modules first and the top package replaced by
# an empty stub (so that its __init__, which imports everything in one fixed order, cannot mask a cycle or a missing
# import); then, purged again, the plain `import proxgen_jax.X` for every X. One subprocess: jax, optax and flax
# are imported once (a fresh interpreter per module costs ~2 s of CPU each; that literal form runs as a slow test).
_ISOLATED = r"""
import importlib, json, sys, traceback, types
names, root = json.loads(sys.argv[1]), sys.argv[2]
import jax, optax, flax  # third-party, loaded once
def purge():
    for m in [m for m in sys.modules if m == "proxgen_jax" or m.startswith("proxgen_jax.")]:
        del sys.modules[m]
failures = {}
for name in names:
    purge()
    stub = types.ModuleType("proxgen_jax")
    stub.__path__ = [root + "/proxgen_jax"]
    sys.modules["proxgen_jax"] = stub
    try:
        importlib.import_module(name)
    except Exception:
        failures["isolated " + name] = traceback.format_exc(limit=-3)
purge()
for name in names:
    try:
        importlib.import_module(name)
    except Exception:
        failures["plain " + name] = traceback.format_exc(limit=-3)
print(json.dumps(failures))
"""

# Modules that act when imported are imported under their guard only (`python -m` runs them, tested elsewhere).
IMPORTABLE = sorted(m for m in MODULES if not m.endswith(".__main__") and m != "proxgen_jax")


def test_every_module_imports_on_its_own():
    out = subprocess.run([sys.executable, "-c", _ISOLATED, json.dumps(IMPORTABLE), str(ROOT)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-3000:]
    failures = json.loads(out.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"{k}:\n{v}" for k, v in failures.items())


@pytest.mark.slow
def test_every_module_imports_in_a_fresh_interpreter():
    """The literal ``python -c "import proxgen_jax.X"``, one interpreter per module, run in parallel."""
    def one(name):
        r = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        return name, r.returncode, r.stderr[-1500:]

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(one, sorted(m for m in MODULES if not m.endswith(".__main__"))))
    failed = {n: err for n, rc, err in results if rc}
    assert not failed, "\n".join(f"{n}:\n{e}" for n, e in failed.items())
