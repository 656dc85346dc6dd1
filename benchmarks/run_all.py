"""Regenerates RESULTS.md: runs every benchmark's full mode, then writes the tables, plots and verdicts.

Usage::

    python benchmarks/run_all.py            # full runs (tens of minutes on 2 CPU cores), then RESULTS.md
    python benchmarks/run_all.py --quick    # every --quick mode into benchmarks/results_quick/ and
                                            # RESULTS_quick.md (a smoke test; RESULTS.md is left alone)
    python benchmarks/run_all.py --report-only   # rebuild RESULTS.md from benchmarks/results/*/ as they are

Each benchmark writes into ``benchmarks/results/<name>/``; its stdout is kept as ``<name>/stdout.txt`` and the
tables it prints are copied into RESULTS.md verbatim. Verdicts on the paper's claims are computed from the JSON
files (never typed by hand), so they change if the numbers do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
BENCHMARKS = [  # (name, script) — skipped when the script does not exist
    ("fig2", "fig2_sparse_cnn.py"),
    ("table3", "table3_binary.py"),
    ("pytorch", "pytorch_side_by_side.py"),
    ("step_overhead", "step_overhead.py"),
    ("step_cycles", "step_cycles.py"),
    ("train_step", "train_step.py"),
    ("step_asm", "step_asm.py"),
    ("group_step_time", "group_step_time.py"),
    ("lasso_support", "lasso_support.py"),
    ("granger_causality", "granger_causality.py"),
    ("kfac_digits", "kfac_digits.py"),
    ("target_sparsity", "target_sparsity.py"),
    ("quantization", "quantization.py"),
    ("parq", "parq_side_by_side.py"),
    ("budgets", "budgets.py"),
    ("pat", "pat_side_by_side.py"),
    ("compaction", "compaction.py"),
]


def run_benchmarks(quick: bool, results: str) -> dict[str, float]:
    times = {}
    for name, script in BENCHMARKS:
        path = os.path.join(HERE, script)
        if not os.path.exists(path):
            print(f"[run_all] {script} missing: skipped")
            continue
        out = os.path.join(results, name)
        os.makedirs(out, exist_ok=True)
        cmd = [sys.executable, path, "--out", out] + (["--quick"] if quick else [])
        print(f"[run_all] {' '.join(cmd)}", flush=True)
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        times[name] = time.perf_counter() - t
        with open(os.path.join(out, "stdout.txt"), "w") as f:
            f.write(proc.stdout)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:])
            raise SystemExit(f"[run_all] {script} failed with exit code {proc.returncode}")
        print(f"[run_all] {name}: {times[name]:.0f} s", flush=True)
    return times


def _read(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f) if path.endswith(".json") else f.read()


def _section_table(name: str) -> str:
    """A benchmark's table: the ``table`` its JSON holds (Markdown), else the tables its captured stdout printed."""
    result = _read(os.path.join(RESULTS, name, f"{name}.json"))
    if isinstance(result, dict) and isinstance(result.get("table"), str):
        return result["table"]
    return _tail_table(_read(os.path.join(RESULTS, name, "stdout.txt")))


def _tail_table(stdout: str | None) -> str:
    """The printed tables of a benchmark (lines starting with '|' plus the lines right around them)."""
    if not stdout:
        return "_not run_"
    lines = stdout.rstrip().splitlines()
    keep = []
    for i, ln in enumerate(lines):
        if ln.startswith("|"):
            if i > 0 and not lines[i - 1].startswith("|"):  # a new table: its caption line ("...:"), if any
                caption = next((c for c in reversed(lines[:i]) if c.strip()), "")
                keep += ([""] if keep else []) + ([caption, ""] if caption.endswith(":") else [])
            keep.append(ln)
    return "\n".join(keep) if keep else "```\n" + "\n".join(lines[-15:]) + "\n```"


def _fig2_verdicts(d) -> list[str]:
    out = []
    by = {}
    for r in d["runs"]:
        by.setdefault((r["config"]["optimizer"], r["config"]["regularizer"]), []).append(r)
    m = lambda runs, key: float(np.mean([r["final"][key] for r in runs]))  # noqa: E731
    for reg in ("l1", "ltwothirds", "lhalf"):
        pg, sg = by.get(("proxgen_adam", reg)), by.get(("subgradient_adam", reg))
        if not (pg and sg):
            continue
        fo_pg, fo_sg = m(pg, "objective"), m(sg, "objective")
        # epoch at which ProxGen's mean objective first drops below the subgradient's final objective
        mean_curve = np.mean([r["objective"] for r in pg], axis=0)
        hit = int(np.argmax(mean_curve <= fo_sg)) + 1 if np.any(mean_curve <= fo_sg) else None
        out.append(f"- **{reg}**: final F — ProxGen {fo_pg:.3f} vs subgradient {fo_sg:.3f} "
                   f"({'lower' if fo_pg < fo_sg else 'not lower'}; ProxGen reaches the subgradient's final F "
                   f"{'at epoch ' + str(hit) if hit else 'never'} of {len(mean_curve)}); test accuracy "
                   f"{100 * m(pg, 'test_acc'):.1f} % vs {100 * m(sg, 'test_acc'):.1f} %; exact zeros "
                   f"{100 * m(pg, 'sparsity'):.1f} % vs {100 * m(sg, 'sparsity'):.1f} %.")
    pg, hc = by.get(("proxgen_adam", "l0")), by.get(("l0_hc", "l0"))
    if pg and hc:
        out.append(f"- **ℓ0**: ProxGen test accuracy {100 * m(pg, 'test_acc'):.1f} % at {100 * m(pg, 'sparsity'):.1f} % "
                   f"zeros vs ℓ0-hc {100 * m(hc, 'test_acc'):.1f} % at {100 * m(hc, 'sparsity'):.1f} % zeros; "
                   f"final F {m(pg, 'objective'):.3f} vs {m(hc, 'objective'):.3f}.")
    ps = by.get(("prox_sgd", "l1"))
    if ps and by.get(("proxgen_adam", "l1")):
        out.append(f"- **Prox-SGD (ℓ1)**: final F {m(ps, 'objective'):.3f} (ProxGen {m(by[('proxgen_adam', 'l1')], 'objective'):.3f}), "
                   f"test accuracy {100 * m(ps, 'test_acc'):.1f} %, exact zeros {100 * m(ps, 'sparsity'):.1f} % "
                   "(its convex-combination step never lands exactly on 0).")
    return out


def _table3_verdicts(d) -> list[str]:
    rows = {r["method"]: r for r in d["rows"]}
    pq = rows.get("ProxQuant")
    out = []
    for name, r in rows.items():
        if name.startswith("Revised") and pq:
            diff = r["test_error_mean"] - pq["test_error_mean"]
            out.append(f"- {name}: {r['test_error_mean']:.2f} ± {r['test_error_std']:.2f} % vs ProxQuant "
                       f"{pq['test_error_mean']:.2f} ± {pq['test_error_std']:.2f} % "
                       f"({'better' if diff < 0 else 'worse'} by {abs(diff):.2f} points).")
    bc = rows.get("BinaryConnect")
    if bc:
        best = min((r for n, r in rows.items() if n.startswith("Revised")), key=lambda r: r["test_error_mean"],
                   default=None)
        if best:
            out.append(f"- Best revised ProxQuant ({best['method']}) vs BinaryConnect: {best['test_error_mean']:.2f} % vs "
                       f"{bc['test_error_mean']:.2f} %.")
    return out


def _table3_reason(best, bc) -> str:
    """Why BinaryConnect wins Table 3 here, from the freeze-point accuracies the benchmark records."""
    if "test_acc_bn_reestimated" not in best or "test_acc_latent" not in bc:
        return " — **disagrees at this scale**."
    return (f" — **disagrees at this scale**: BinaryConnect's forward pass is binary throughout, so rounding at the "
            f"freeze costs it nothing (test accuracy {100 * bc['test_acc_latent']:.1f} % before, "
            f"{100 * bc['test_acc_bn_reestimated']:.1f} % after BatchNorm re-estimation), whereas the best prox row "
            f"({best['method']}) trains a real-valued network ({100 * best['test_acc_latent']:.1f} % unrounded) that loses "
            f"accuracy when rounded ({100 * best['test_acc_bn_reestimated']:.1f} % after re-estimation) and the "
            f"fine-tune recovers only part of it; faster λ ramps, which put more weights on ±1 before the freeze, "
            f"pin them there (no sign can change) and were worse on validation (λ selection above).")


def _agreement(fig2, t3) -> list[str]:
    """Claim-by-claim verdicts computed from the JSON files."""
    out = []
    if fig2:
        by = {}
        for r in fig2["runs"]:
            by.setdefault((r["config"]["optimizer"], r["config"]["regularizer"]), []).append(r)
        m = lambda k, key: float(np.mean([r["final"][key] for r in by[k]]))  # noqa: E731
        ratios = {reg: m(("proxgen_adam", reg), "objective") / m(("subgradient_adam", reg), "objective")
                  for reg in ("l1", "ltwothirds", "lhalf")
                  if ("proxgen_adam", reg) in by and ("subgradient_adam", reg) in by}
        if ratios:
            vals = list(ratios.values())
            grows = all(a >= b for a, b in zip(vals, vals[1:]))
            out.append("- *ProxGen minimises F faster than the subgradient method, and the gap grows as q decreases* — "
                       "final F ratio ProxGen/subgradient: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
                       + (" — **agrees** (the gap grows as q decreases)." if grows and vals[-1] < 1 else " — **partly**."))
            accs = {reg: 100 * (m(("proxgen_adam", reg), "test_acc") - m(("subgradient_adam", reg), "test_acc"))
                    for reg in ratios}
            out.append("- *ProxGen reaches better accuracy at similar or better sparsity* — accuracy difference "
                       "(ProxGen − subgradient, points): " + ", ".join(f"{k} {v:+.1f}" for k, v in accs.items())
                       + "; the subgradient runs have no exact zeros at all, ProxGen's have "
                       + ", ".join(f"{k} {100 * m(('proxgen_adam', k), 'sparsity'):.0f} %" for k in ratios)
                       + (" — **agrees**." if min(accs.values()) >= 0 else
                          " — **not at this scale for accuracy** (within about one std), but only ProxGen yields sparse networks."))
            sg = by.get(("subgradient_adam", "lhalf"))
            if sg:
                trend = float(np.mean([r["conditions"].get("min_step_trend", np.nan) for r in sg]))
                gam = float(np.mean([r["conditions"].get("gamma_min_step", np.nan) for r in sg]))
                out.append(f"- *The subgradient's |θ|^(q−1) blow-up near 0 hinders convergence* — for subgradient ℓ½ the "
                           f"smallest effective step α/(√v̂+δ) falls to {gam:.2g} (last/first-tenth ratio {trend:.2f}), "
                           "because the huge subgradients of tiny weights inflate v̂; ProxGen ℓ½'s smallest is "
                           f"{float(np.mean([r['conditions'].get('gamma_min_step', np.nan) for r in by[('proxgen_adam', 'lhalf')]])):.2g}"
                           " — **consistent** with the paper's explanation.")
        if ("proxgen_adam", "l0") in by and ("l0_hc", "l0") in by:
            a_pg, a_hc = m(("proxgen_adam", "l0"), "test_acc"), m(("l0_hc", "l0"), "test_acc")
            s_pg, s_hc = m(("proxgen_adam", "l0"), "sparsity"), m(("l0_hc", "l0"), "sparsity")
            out.append(f"- *ProxGen ℓ0 beats ℓ0-hc by a large margin* — accuracy {100 * a_pg:.1f} % vs {100 * a_hc:.1f} %, "
                       f"but at {100 * s_pg:.0f} % vs {100 * s_hc:.0f} % zeros"
                       + (" — **not comparable at equal sparsity here** (ℓ0-hc ends sparser with a lower F); a λ sweep "
                          "would be needed." if s_hc > s_pg + 0.05 else " — **agrees**." if a_pg > a_hc else " — **disagrees**."))
    if t3:
        rows = {r["method"]: r for r in t3["rows"]}
        pq, bc = rows.get("ProxQuant"), rows.get("BinaryConnect")
        rev = {n: r for n, r in rows.items() if n.startswith("Revised")}
        if pq and rev:
            better = [n for n, r in rev.items() if r["test_error_mean"] < pq["test_error_mean"]]
            clear = [n for n in better if pq["test_error_mean"] - rev[n]["test_error_mean"]
                     > max(pq["test_error_std"], rev[n]["test_error_std"])]
            out.append(f"- *Revised ProxQuant beats ProxQuant* — {len(better)} of {len(rev)} variants have a lower mean "
                       f"test error, {len(clear)} by more than one std"
                       + (" — **agrees**." if len(better) == len(rev) else " — **partly**."))
        if bc and rev:
            best = min(rev.values(), key=lambda r: r["test_error_mean"])
            out.append(f"- *Revised ProxQuant beats BinaryConnect* — best revised {best['test_error_mean']:.1f} % vs "
                       f"BinaryConnect {bc['test_error_mean']:.1f} %"
                       + (" — **agrees**." if best["test_error_mean"] < bc["test_error_mean"] else
                          _table3_reason(best, bc)))
    return out


def _budgets_section(results: str) -> list[str]:
    """Issue 16: accuracy at equal sparsity (budgets.py), its step-time rows and the torchao PAT side by side."""
    d = _read(os.path.join(results, "budgets", "budgets.json"))
    L = ["## Budgets: exact sparsity, 2:4 and filter budgets in Adam's metric (`benchmarks/budgets.py`)", ""]
    if not d:
        return L + ["_not run_", ""]
    L += [f"Digits, {', '.join(d['models'])}; {d['seeds']} seeds; steps {', '.join(f'{k} {v}' for k, v in d['steps'].items())}; α = {d['lr']:g}, batch "
          f"{d['batch']}; Zhu & Gupta ramp from {100 * d['ramp'][0]:g} % to {100 * d['ramp'][1]:g} % of the steps, "
          f"zeros frozen (healing) from {100 * d['freeze']:g} % for metric/euclid; the first layer stays dense. "
          "metric = ProxGen's projection after `scale_by_adam_precond()`; euclid = the same link after "
          "`optax.scale_by_adam()` (PAT's magnitude rule); gmp = gradual magnitude pruning after `optax.adam` "
          f"(mask every {d['gmp_every']} steps, jaxpruner's default rule; 2:4 one-shot at the ramp's end); "
          "l1+ctrl = ℓ1 / group ℓ1,2 with the λ controller. Bold: the best mean per budget.", "",
          d["table"], "", "Findings (computed from the JSON):", ""] + d["findings"] + [""]
    if os.path.exists(os.path.join(results, "budgets", "budgets.png")):
        L += ["![budgets](benchmarks/results/budgets/budgets.png)", ""]
    so = _read(os.path.join(results, "budgets", "step_overhead_budgets.json"))
    if so:
        L += [f"Step time of the budget links on the ResNet-34 tree ({so['params'] / 1e6:.1f}M params, donated, "
              f"{so['rounds']} rounds, ratio to `optax.adam` measured side by side on a loaded shared 2-core machine):",
              "", "| link | ours ms | adam ms | ratio | CPU-time ratio | target | compile s (adam) | page faults per step "
              "(adam) | kernel ms per step (adam) |", "|---|---|---|---|---|---|---|---|---|"]
        for r in so["rows"]:
            g = r["donated"]
            faults = (f"{g['page_faults']:.0f} ({g['adam_page_faults']:.0f}) | {g['kernel_ms']:.1f} "
                      f"({g['adam_kernel_ms']:.1f})" if "page_faults" in g else "— | —")
            L.append(f"| {r['regularizer']} | {g['ours_ms']:.1f} | {g['adam_ms']:.1f} | {g['ratio']:.2f}"
                     f"{'' if g['meets_target'] else ' ✗'} | {g['cpu_ratio']:.2f} | {g['target']:.2f} | "
                     f"{r['compile']['ours']['compile_s']:.1f} ({r['compile']['adam']['compile_s']:.1f}) | {faults} |")
        L.append("")
    pat = _read(os.path.join(results, "pat", "pat_side_by_side.json"))
    L += ["### torchao PAT side by side (`benchmarks/pat_side_by_side.py`)", "",
          pat["table"] if pat and "table" in pat else (pat or {}).get("skipped", "_not run_"), ""]
    return L


def write_report(times: dict[str, float] | None = None, quick: bool = False) -> str:
    RESULTS = os.path.join(HERE, "results_quick" if quick else "results")  # noqa: N806
    fig2 = _read(os.path.join(RESULTS, "fig2", "fig2.json"))
    t3 = _read(os.path.join(RESULTS, "table3", "table3.json"))
    pt = _read(os.path.join(RESULTS, "pytorch", "pytorch_side_by_side.json"))
    L = ["# Results", "",
         "Measured by `python benchmarks/run_all.py` (this file is generated; do not edit by hand). CPU scale: sklearn's "
         "8×8 digits (1347 train / 450 test), small networks, a 2-core shared machine. These are *small-scale "
         "analogues* of the paper's CIFAR-10/ImageNet experiments, not reproductions.", ""]
    if quick:
        L += ["> **Generated from `--quick` runs: the numbers below are smoke-test values, not results.**", ""]
    L += ["## Fig. 2 at CPU scale: sparse small CNN (ProxGen vs subgradient, ℓ0 vs ℓ0-hc)", ""]
    if fig2:
        L += [f"Small CNN (Conv16–Conv32–maxpool–Linear, 9,872 kernel weights), Adam constants (0.9, 0.999, 1e-8), "
              f"constant α = 3e-3, batch 64, λ = 1e-3 for every regularizer, {fig2['epochs']} epochs, "
              f"{fig2['seeds']} seeds (mean ± std). Sparsity = exact zeros among conv/dense kernels. "
              "`compile s` is jit compilation, `train s` the rest of the wall time (steps and per-epoch evaluation).", "",
              _read(os.path.join(RESULTS, "fig2", "fig2_table.md")) or "", "",
              "![objective](benchmarks/results/fig2/fig2_objective.png)", "",
              "![curves](benchmarks/results/fig2/fig2_curves.png)", "",
              "![tradeoff](benchmarks/results/fig2/fig2_tradeoff.png)", "",
              "Theorem-1 diagnostics (first seed): (C-3) step and gradient norms, (C-4) the smallest per-coordinate "
              "step α/(√v̂+δ):", "", "![diagnostics](benchmarks/results/fig2/fig2_diagnostics.png)", "",
              "Measured against the paper's claims (Sec. 4, Fig. 2):", ""] + _fig2_verdicts(fig2) + [""]
        conds = [(r["label"], r["conditions"]) for r in fig2["runs"] if r["config"]["seed"] == 0]
        L += ["| run (seed 0) | D = max‖θ_{t+1}−θ_t‖ | G = max‖g_t‖ | γ = min step | min-step trend (last/first tenth) |",
              "|---|---|---|---|---|"]
        for lab, c in conds:
            na = lab.startswith(("prox_sgd", "l0_hc"))
            gm = "n/a" if na else f"{c.get('gamma_min_step', float('nan')):.3g}"
            tr = "n/a" if na else f"{c.get('min_step_trend', float('nan')):.3g}"
            L.append(f"| {lab} | {c.get('D_max_step_norm', float('nan')):.3g} | {c.get('G_max_grad_norm', float('nan')):.3g} | "
                     f"{gm} | {tr} |")
        L += ["", "n/a: Prox-SGD takes no α_t(C_t+δI)^{-1} step (it moves by a convex combination); for ℓ0-hc "
              "(two Adam rates) the quantity is not comparable.", ""]
    else:
        L += ["_not run_", ""]
    L += ["## Table 3 at CPU scale: binary small ResNet", ""]
    if t3:
        fz = t3.get("freeze_epoch")
        L += [f"Small ResNet (stem16, 2 stages of one basic block, BatchNorm), kernels binarised except the stem and the "
              f"classifier, α = 3e-3, batch 64, {t3['epochs']} epochs, {t3['seeds']} seeds (mean ± std). "
              + (f"ProxQuant's protocol for every quantised row: λ_t = λ_rate·t ramps from 0 for {fz} epochs "
                 f"(λ_rate chosen per row on a validation split, 20 % of the seed-0 training set, from a 3-point grid), "
                 f"then the binarised kernels are hard-quantised to ±1 and frozen, the BatchNorm statistics are "
                 f"re-estimated for them and the remaining {t3['epochs'] - fz} epochs fine-tune the other parameters "
                 f"(BatchNorm, stem, classifier) with Adam. The λ = 0 row is the same protocol without any prox "
                 f"(plain rounding at the freeze). 'acc. at freeze' is measured on the test set at the freeze point."
                 if fz else "λ ramped linearly over training; test error after hard quantisation to ±1."), "",
              _read(os.path.join(RESULTS, "table3", "table3_table.md")) or "", "",
              "![table3](benchmarks/results/table3/table3_curves.png)", "",
              "Measured against the paper's Table 3:", ""] + _table3_verdicts(t3) + [""]
        if t3.get("selection"):
            L += ["λ selection (validation error, seed 0): " + "; ".join(
                f"{s['method']} λ_rate={s.get('lam_rate', s.get('lam')):g}: {100 * s['val_error']:.1f} %"
                + (f" ({100 * s['on_level_at_freeze']:.0f} % on ±1 at freeze)"
                   if "on_level_at_freeze" in s and "scale" not in s["method"] else "")
                for s in t3["selection"]), ""]
    else:
        L += ["_not run_", ""]
    L += ["## PyTorch side by side (proximal Adam + ℓ½ step)", ""]
    if pt and not pt.get("skipped"):
        L += [f"{pt['n_params']:,} parameters in ResNet-like shapes, {pt['steps']} steps with the same random gradients, "
              f"CPU (torch {pt['torch_version']} with 1 thread; jax {pt['jax_version']}).", "",
              "| implementation | median step (ms) | exact zeros after |", "|---|---|---|",
              f"| PyTorch per-parameter loop (authors' style) | {pt['torch_step_ms_median']:.2f} | {100 * pt['sparsity_torch']:.2f} % |",
              f"| proxgen_jax `proxgen_adam(Lq(0.5))`, jit | {pt['jax_step_ms_median']:.2f} | {100 * pt['sparsity_jax']:.2f} % |", "",
              f"Zero patterns differ on {pt['support_mismatch']} coordinates (the ℓ½ prox jumps at its threshold, so "
              f"rounding can flip a coordinate); elsewhere max |θ_torch − θ_jax| = {pt['max_abs_param_diff_common_support']:.1e}. "
              f"JAX compile time {pt['jax_compile_s']:.1f} s is excluded from the step time.", ""]
    else:
        L += [(pt or {}).get("skipped", "_not run_"), ""]
    for name, title in (("step_overhead", "Step overhead"),
                        ("step_cycles", "Step arithmetic per parameter, leaf in cache, one core"),
                        ("train_step", "Whole training step (forward, backward, optimizer), donated"),
                        ("step_asm", "Instructions per parameter in the fused update loop (XLA:CPU machine code)"),
                        ("group_step_time", "Group ℓ1,2 step time"),
                        ("lasso_support", "Lasso support recovery"),
                        ("granger_causality", "Granger causality with group ℓ1,2 (paper's appendix task)"),
                        ("kfac_digits", "Proximal KFAC on digits"),
                        ("target_sparsity", "Target sparsity controller"),
                        ("quantization", "Quantisation without BatchNorm: digits MLP, 1/2/4 bits, learned scales"),
                        ("compaction", "Compaction: filter-sparse CNN and ResNet made smaller (pg.compact)")):
        L += [f"## {title} (`benchmarks/{name}.py`)", "", _section_table(name), ""]
        if os.path.exists(os.path.join(RESULTS, name, f"{name}.png")):
            L += [f"![{name}](benchmarks/results/{name}/{name}.png)", ""]
    parq = _read(os.path.join(RESULTS, "parq", "parq_side_by_side.json"))
    L += ["## torchao PARQ side by side, 2 bits (`benchmarks/parq_side_by_side.py`)", "",
          parq["table"] if parq and "table" in parq else (parq or {}).get("skipped", "_not run_"), ""]
    L += _budgets_section(RESULTS)
    L += ["## Agreement with the paper, in short", ""] + _agreement(fig2, t3) + [""]
    L += ["## Caveats", "",
          "- Scale: 8×8 digits and networks with thousands of weights, trained for minutes; the paper trains ResNet-34/56 "
          "on CIFAR-10 for hundreds of epochs with step-decay schedules. Differences of a point or two are within what "
          "seeds, λ and α choices move here.",
          "- One λ and one constant α for all methods in Fig. 2 (not tuned per method); the paper tunes and decays the step.",
          "- ℓ0-hc's gate parameters use a 10× larger Adam rate (otherwise no gate can close in this budget); "
          "Prox-SGD uses its own default schedules (ε₀ = 0.06, ρ₀ = 0.9).",
          "- The step-overhead table is the donated regime only (`--regimes donated`, 9 rounds, on a quiet machine: A/A "
          "1.01); the not-donated regime was not re-run with the current code. Its SCAD row (1.40) is an outlier of "
          "that run: Adam's own median in that row was 13.2 ms against 17–21 ms in every other row, and SCAD's "
          "18.6 ms equals Adam's usual time; SCAD rerun alone (9 rounds) gave 1.19, the previous session's run 1.15.",
          "- XLA:CPU allocates a step's temporaries afresh at every call, and their pages fault in again (~2 µs per "
          "4 KiB page): the page-fault and kernel-time columns show it. The elementwise rows and 2:4 write none; "
          "top-k writes its integer keys (one int32 per unit) and the group prox `z` and `α/(C_t+δ)`.",
          "- Timings (`compile s`, `train s`, step times) were taken on a shared 2-core machine under load from other jobs; "
          "ratios are more meaningful than absolute values, and both fluctuate between runs.",
          "- Table 3's λ_rate is chosen per method on a validation split (269 digits: one digit is 0.37 points) from a "
          "3-point grid; BinaryConnect has no λ. The per-channel-scale row binarises to ±1 at the freeze: behind a "
          "BatchNorm a per-channel scale changes nothing once the statistics are re-estimated.", ""]
    if times:
        L += ["## Wall time of this regeneration", "", ", ".join(f"{k}: {v:.0f} s" for k, v in times.items()), ""]
    text = "\n".join(L)
    if quick:
        text = text.replace("](benchmarks/results/", "](benchmarks/results_quick/")
    with open(os.path.join(ROOT, "RESULTS_quick.md" if quick else "RESULTS.md"), "w") as f:
        f.write(text)
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    results = os.path.join(HERE, "results_quick" if args.quick else "results")
    times = None if args.report_only else run_benchmarks(args.quick, results)
    write_report(times, args.quick)
    print(f"[run_all] wrote {os.path.join(ROOT, 'RESULTS_quick.md' if args.quick else 'RESULTS.md')}")


if __name__ == "__main__":
    main()
