"""Is the compiled training step of every row unchanged against another revision? A noise-free speed check.

Timings on a shared 2-core machine move by ±4 %; the compiled XLA program does not. This compiles the donated step
``chain(scale_by_adam_precond(), prox) + optax.apply_updates`` for every row (and ``optax.adam``) with the code of
``--base`` (a git revision, checked out in a temporary worktree) and with the working tree, strips names, source
locations and stack frames, and compares the programs. Identical programs run identically fast.

    python benchmarks/compiled_step_identity.py --base 12e6a2c [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
_SKIP = ("FileNames", "FunctionNames", "FileLocations", "StackFrames")


def fingerprints() -> dict:
    """``{row: "hash ops=N"}`` of the compiled, donated step for the proxgen_jax importable now."""
    import jax
    import jax.numpy as jnp
    import optax

    import proxgen_jax as pg

    reg = pg.regularizers
    rows = {"adam": None, "l0": reg.L0(), "l1": reg.L1(), "l1/2": reg.Lq(0.5), "l2/3": reg.Lq(2 / 3),
            "lq0.3": reg.Lq(0.3), "mcp": reg.MCP(3.0), "scad": reg.SCAD(3.7), "binary q=1": reg.binary(1.0),
            "binary q=1/2": reg.binary(0.5), "group l12": "group"}
    params = {"conv": {"kernel": jnp.ones((3, 3, 16, 32))},
              "dense": {"kernel": jnp.ones((64, 10)), "bias": jnp.ones(10)}}
    out = {}
    for name, r in rows.items():
        if r is None:
            tx = optax.adam(1e-3)
        elif r == "group":
            tx = optax.chain(pg.scale_by_adam_precond(), pg.prox_group_l12(
                1e-3, 1e-3, group_axes=pg.transforms.output_unit_groups, mask=pg.kernels_only))
        else:
            tx = optax.chain(pg.scale_by_adam_precond(), pg.proximal_step(r, 1e-4, 1e-3, mask=pg.kernels_only))

        def step(p, s, g, tx=tx):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        text = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), params).compile().as_text()
        lines = [re.sub(r"stack_frame_id=\d+", "", line) for line in text.splitlines()
                 if not (re.match(r'^\s*\d+ (\{|")', line) or line.strip() in _SKIP or line.startswith("HloModule"))]
        body = re.sub(r"\.\d+\b", "", re.sub(r"metadata=\{[^}]*\}", "", "\n".join(lines)))
        out[name] = f"{hashlib.sha1(body.encode()).hexdigest()[:12]} ops={body.count(' = ')}"
    return out


def _run_at(src: pathlib.Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    code = f"import json, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); " \
           "import compiled_step_identity as c; print(json.dumps(c.fingerprints()))"
    res = subprocess.run([sys.executable, "-c", code], env=env, cwd=tempfile.gettempdir(), capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision to compare with")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wt = pathlib.Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(wt), args.base], check=True)
        try:
            base = _run_at(wt)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], check=False)
    now = _run_at(ROOT)
    print(f"| row | {args.base} | working tree | same program |\n|---|---|---|---|")
    for k in now:
        print(f"| {k} | {base.get(k)} | {now[k]} | {'yes' if base.get(k) == now[k] else 'NO'} |")
    if args.out:
        pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(args.out) / "compiled_step_identity.json").write_text(
            json.dumps({"base": args.base, "base_rows": base, "rows": now}, indent=1))


if __name__ == "__main__":
    main()
