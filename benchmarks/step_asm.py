"""Instructions per parameter in each row's fused update loop, from the machine code XLA:CPU emits. Noise-free.

Timings on a shared machine move by several per cent; the compiled loop does not. For every elementwise row of
``step_overhead.py`` (and ``optax.adam``) this compiles the donated step on one ``(4096, 512)`` float32 leaf with
``--xla_dump_to``, disassembles the kernel that updates the parameters (the loop fusion holding Adam's square
root) with ``objdump``, and counts, in its innermost vectorised loop, vector instructions and divider operations
(``vdiv*``, ``vsqrt*``) per 8 parameters (one 256-bit vector). The moment updates are the same two fusions in every
row and are reported once. x86-64 Linux with binutils only; elsewhere it says so and exits.

The excess over Adam's loop is the prox's arithmetic plus what the optax convention costs every prox row: the
update ``x − θ`` that ``apply_updates`` adds back (2 instructions per vector). ``step_overhead.py`` measured
~0.3–0.5 % of the donated ResNet-34 step per extra instruction per vector on this project's machine (a calibration
row of dependent multiply-adds; see the issue-19 report).

Usage:
  python benchmarks/step_asm.py [--quick] [--out DIR] [--only l1,mcp]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

DUMP = tempfile.mkdtemp(prefix="step_asm_")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={DUMP}").strip()

import argparse
import platform

import jax
import jax.numpy as jnp
import optax
from step_overhead import regularizer_rows, row_tx, write_json

import proxgen_jax as pg

LANES = {"xmm": 4, "ymm": 8, "zmm": 16}
_INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")


def disassemble(path: str) -> list[tuple[int, str, str]]:
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True, text=True).stdout
    return [(int(m.group(1), 16), m.group(2), m.group(3)) for m in map(_INSN.match, text.splitlines()) if m]


def innermost_vector_loops(insns) -> list[list[tuple[int, str, str]]]:
    """Bodies of backward conditional jumps that contain no other backward jump and store a vector."""
    addrs = [a for a, _, _ in insns]
    loops = []
    for j, (a, op, args) in enumerate(insns):
        target = re.match(r"([0-9a-f]+)", args)
        if op.startswith("j") and op != "jmp" and target and int(target.group(1), 16) < a:
            t = int(target.group(1), 16)
            if t not in addrs:
                continue
            body = insns[addrs.index(t):j + 1]
            if sum(o.startswith("j") for _, o, _ in body) == 1 and any(_is_vector_store(o, s) for _, o, s in body):
                loops.append(body)
    return loops


def _is_vector_store(op: str, args: str) -> bool:
    return op.startswith("vmov") and re.search(r"mm\d+(\{[^}]*\})*,\s*[^%]*\(", args) is not None


def loop_stats(body) -> dict:
    """Per 8 parameters: vector instructions (stores included) and divider operations of one loop body."""
    stores = [s for _, o, s in body if _is_vector_store(o, s)]
    lanes = LANES[re.search(r"([xyz]mm)\d+", stores[0]).group(1)]
    elements = lanes * len(stores)  # the fusion writes one output: one store per vector of parameters
    vec = [o for _, o, _ in body if o.startswith("v") or o.startswith("k")]
    div = [o for o in vec if o.startswith(("vdiv", "vsqrt"))]
    return {"params_per_iteration": elements, "vector_insns_per_8": 8 * len(vec) / elements,
            "divider_ops_per_8": 8 * len(div) / elements, "mnemonics": [o for _, o, _ in body]}


def update_loop(prefix: str) -> dict | None:
    """The parameter-update loop of the module ``prefix`` (the kernel whose loop takes Adam's square root)."""
    best = None
    for name in sorted(os.listdir(DUMP)):
        if not (name.startswith(prefix) and name.endswith(".o")):
            continue
        for body in innermost_vector_loops(disassemble(os.path.join(DUMP, name))):
            if any(o.startswith("vsqrt") for _, o, _ in body):
                stats = loop_stats(body)
                if best is None or stats["vector_insns_per_8"] > best["vector_insns_per_8"]:
                    best = dict(stats, kernel=name.split(".obj-file.")[-1])
    return best


def compile_row(slug: str, tx) -> str:
    """Compiles the donated step on one leaf under the module name ``jit_<slug>``; returns its dump prefix."""
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state
    step.__name__ = step.__qualname__ = slug
    params = {"kernel": jnp.zeros((4096, 512), jnp.float32)}
    jax.jit(step, donate_argnums=(0, 1)).lower(params, jax.eval_shape(tx.init, params), params).compile()
    matches = [n for n in os.listdir(DUMP) if f".jit_{slug}." in n]
    return matches[0].split(f".jit_{slug}.")[0] + f".jit_{slug}." if matches else f"jit_{slug}."


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="rows l1, l1/2, mcp only")
    ap.add_argument("--out", default=None, help="directory for step_asm.json")
    ap.add_argument("--only", default=None, help="comma-separated row names (default: every elementwise row)")
    args = ap.parse_args(argv)
    if jax.default_backend() != "cpu" or platform.machine() != "x86_64" or shutil.which("objdump") is None:
        print(f"step_asm: needs XLA:CPU on x86-64 and objdump (have {jax.default_backend()}, {platform.machine()})")
        write_json(args.out, "step_asm", {"benchmark": "step_asm", "skipped": True})
        return None
    only = set(args.only.split(",")) if args.only else ({"l1", "l1/2", "mcp"} if args.quick else None)
    rows = [("optax.adam", None)] + [(n, r) for n, r, _ in regularizer_rows()
                                     if isinstance(r, pg.regularizers.Regularizer) and (only is None or n in only)]
    out = []
    for i, (name, reg) in enumerate(rows):
        stats = update_loop(compile_row(f"row{i}", row_tx(reg)))
        if stats is None:
            print(f"{name}: no vectorised update loop found", file=sys.stderr)
            continue
        out.append(dict(stats, regularizer=name))
    base = out[0]["vector_insns_per_8"]
    print("XLA:CPU update loop of the donated step, one (4096, 512) float32 leaf, "
          f"per 8 parameters (jax {jax.__version__}):")
    print("| row | vector instructions | excess over Adam's | divider ops (div, sqrt) |")
    print("|---|---|---|---|")
    for r in out:
        r["excess_over_adam"] = r["vector_insns_per_8"] - base
        print(f"| {r['regularizer']} | {r['vector_insns_per_8']:.1f} | {r['excess_over_adam']:+.1f} | "
              f"{r['divider_ops_per_8']:.1f} |")
    result = {"benchmark": "step_asm", "quick": args.quick, "jax": jax.__version__, "machine": platform.machine(),
              "rows": out}
    write_json(args.out, "step_asm", result)
    shutil.rmtree(DUMP, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
