"""The main job (``make run``): the whole ELIS pipeline, offline, on the embedded dataset.

Stages (each is also its own entry point; the run folder holds all their artefacts)::

    1 build_dataset.py data=embedded          → data/embedded/
    2 train.py predictor=minilm               → models/minilm-embedded/ (skipped when the
                                                checkpoint matches the dataset and config)
    3 run_experiment.py preset=compare        → <run>/experiment/   (simulator, all policies)
    4 run_experiment.py worker=hf ...         → <run>/real/         (SmolLM2 on this CPU)
    → <run>/report.md

The simulated workload's arrival rate is ``load_factor`` × the capacity estimated from the
cost model (``estimate_capacity_rps``), so queues form on any profile.

The real run measures on a shared CPU whose speed drifts by more than the effect: it runs
``real_repeats`` pairs of (FCFS, ISRTF) on the identical workload of each pair (seed + pair
index), alternating which variant goes first (ABBA…) so a steady drift cancels, and reports
the paired difference with its spread (mean and 95% t-interval over pairs, min/max); when
the interval contains 0 the report says the run shows no difference. Below capacity by
default (``real_load_factor``), with one progress line per run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import hydra
from hydra import compose
from omegaconf import DictConfig, OmegaConf

from elis.cli import check_overrides, precheck, prepare_environment, run_entry
from elis.config import register_resolvers
from elis.serving.cost_model import estimate_capacity_rps

prepare_environment()
log = logging.getLogger(__name__)
register_resolvers()


def _stage_cfg(name: str, overrides: list[str], out_dir: Path) -> DictConfig:
    """Compose stage ``name`` (strict keys: ``+typo=...`` in a stage's list is rejected)."""
    check_overrides(overrides, name)
    return compose(config_name=name, overrides=[*overrides, f"paths.output_dir={out_dir}"])


def _fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _train_stage(cfg: DictConfig, run_dir: Path, manifest: dict) -> dict:
    from elis.predictor.train import run as train_run

    tcfg = _stage_cfg("train", [f"data={cfg.data}", f"predictor={cfg.predictor}", *cfg.train],
                      run_dir / "train")
    model_dir = Path(tcfg.model_dir)
    stamp_path = model_dir / "main_stamp.json"
    key = _fingerprint(
        OmegaConf.to_container(tcfg.predictor, resolve=False),
        OmegaConf.to_container(tcfg.fit, resolve=True),
        OmegaConf.to_container(tcfg.subset, resolve=True),
        int(tcfg.seed),
        manifest.get("splits"), manifest.get("num_pairs"), manifest.get("provenance"),
    )
    if (not cfg.retrain and stamp_path.is_file() and (model_dir / "best.ckpt").is_file()
            and json.loads(stamp_path.read_text()).get("key") == key):
        log.info("predictor: matching checkpoint in %s; training skipped", model_dir)
        print(f"[2/4] predictor: reusing {model_dir / 'best.ckpt'} (matching dataset and config)")
        return json.loads((model_dir / "metrics.json").read_text())
    print(f"[2/4] training predictor={cfg.predictor} on data={cfg.data} ...")
    metrics = train_run(tcfg)
    stamp_path.write_text(json.dumps({"key": key}))
    return metrics


def _experiment_cfg(cfg: DictConfig, run_dir: Path, overrides: list[str], load_factor: float,
                    sub: str, seed: int | None = None) -> DictConfig:
    """The run_experiment config of a stage, its rate set to ``load_factor`` × capacity."""
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from elis.experiments.run import load_samples

    seed = int(cfg.seed) if seed is None else seed
    base = [f"data={cfg.data}", f"predictor={cfg.predictor}", f"seed={seed}"]
    ecfg = _stage_cfg("run_experiment", [*base, *overrides], run_dir / sub)
    split = load_samples(Path(ecfg.paths.data_dir) / ecfg.data.name, ecfg.split)
    mean_out = float(split["num_output_tokens"].clip(upper=int(ecfg.max_tokens)).mean())
    cap = estimate_capacity_rps(
        instantiate(ecfg.cost_model), float(split["num_prompt_tokens"].mean()), mean_out,
        int(ecfg.max_batch_size),
    ) * int(ecfg.num_workers)
    rate = round(load_factor * cap, 4)
    with open_dict(ecfg):
        ecfg.workload.rate_rps = rate
        ecfg.main_capacity_rps = cap
        ecfg.main_load_factor = load_factor
    log.info("%s: capacity ≈ %.3f req/s → rate %.3f req/s (load factor %.2f)", sub, cap, rate, load_factor)
    return ecfg


def _experiment_stage(cfg: DictConfig, run_dir: Path, overrides: list[str],
                      load_factor: float, sub: str) -> tuple[dict, Path, DictConfig]:
    from elis.experiments.run import run as exp_run

    ecfg = _experiment_cfg(cfg, run_dir, overrides, load_factor, sub)
    return exp_run(ecfg), Path(ecfg.paths.output_dir), ecfg


def _predictor_table(m: dict) -> str:
    ev = m.get("eval", {}).get("test")
    if not ev:
        return "(no test split evaluation)\n"
    o = ev["overall"]
    tau = ev.get("kendall_tau_step0")
    tau_s = "n/a" if tau is None or tau != tau else f"{tau:.3f}"
    lines = [f"R² = {o['r2']:.3f}, MAE = {o['mae']:.1f} tokens, RMSE = {o['rmse']:.1f}, "
             f"Kendall τ (step 0) = {tau_s}; per step below (R² from few rows is noisy).", "",
             "| step k | rows | MAE (tokens) | R² |", "|---|---|---|---|"]
    for k, g in ev["per_step"]["groups"].items():
        r2 = g.get("r2")
        lines.append(f"| {k} | {g.get('n', '')} | {g['mae']:.1f} | "
                     f"{'n/a' if r2 is None or r2 != r2 else f'{r2:.3f}'} |")
    return "\n".join(lines) + "\n"


def _realised_rate(run_dir: Path) -> tuple[int, float | None]:
    """(number of requests, realised arrival rate (N − 1) / span in req/s) from workload.parquet."""
    import pandas as pd

    t = pd.read_parquet(run_dir / "workload.parquet", columns=["arrival_time_s"])["arrival_time_s"]
    span = float(t.max() - t.min()) if len(t) > 1 else 0.0
    return len(t), ((len(t) - 1) / span if span > 0 else None)


def _section_header(ecfg: DictConfig, out_dir: Path, what: str) -> str:
    """One paragraph: workload, rates requested and realised, requests, predictor, cost profile."""
    n, realised = _realised_rate(out_dir)
    wl = ecfg.workload
    shape = f"Gamma arrivals (cv {wl.cv})" if wl.kind == "gamma" else f"{wl.kind} arrivals"
    choice = ecfg.get("predictor_choice")
    pred = ecfg.predictor.name if not choice else f"{choice['name']} ({choice['reason']})"
    real = "n/a" if realised is None else f"{realised:.3f}"
    return (f"{what}: {n} requests from the `{ecfg.data.name}` test split, {shape}; rate requested "
            f"{float(wl.rate_rps):.3f} req/s ({float(ecfg.main_load_factor):.2f} × the estimated "
            f"capacity {float(ecfg.main_capacity_rps):.3f} req/s), realised {real} req/s; "
            f"predictor `{pred}`; cost profile `{ecfg.cost_model.name}`; worker `{ecfg.worker.kind}`, "
            f"{ecfg.num_workers} worker(s), batch {ecfg.max_batch_size}, W = {ecfg.window_tokens}, "
            f"max_tokens {ecfg.max_tokens}.")


def _plot_links(plots_dir: Path, base: Path) -> str:
    import os

    pngs = sorted(plots_dir.glob("*.png")) if plots_dir.is_dir() else []
    if not pngs:
        return "Plots: none written."
    return "Plots: " + ", ".join(f"[{p.stem}]({os.path.relpath(p, base)})" for p in pngs)


def paired_summary(rows: list[dict], base: str, other: str, metric: str = "jct_mean_s") -> dict:
    """Paired relative difference ``other`` vs ``base`` on ``metric``, over the repeated pairs.

    ``rows``: one dict per run with keys ``pair``, ``variant``, ``metric``. Returns
    ``{"diffs_pct": [...], "mean_pct", "ci95_pct": (lo, hi) | None, "min_pct", "max_pct",
    "inside_spread": bool}``; the interval is mean ± t(0.975, n−1)·sd/√n (None for n < 2,
    then ``inside_spread`` is True: one pair cannot separate effect from drift).
    """
    import numpy as np
    from scipy import stats

    by_pair: dict = {}
    for r in rows:
        by_pair.setdefault(r["pair"], {})[r["variant"]] = r[metric]
    diffs = np.array([100.0 * (v[other] - v[base]) / v[base] for v in by_pair.values()
                      if v.get(base) and v.get(other) is not None], dtype=float)
    out: dict = {"diffs_pct": diffs.round(2).tolist(), "n": int(len(diffs))}
    if not len(diffs):
        return {**out, "mean_pct": None, "ci95_pct": None, "min_pct": None, "max_pct": None,
                "inside_spread": True}
    mean = float(diffs.mean())
    ci = None
    if len(diffs) > 1:
        half = float(stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs)))
        ci = (mean - half, mean + half)
    inside = ci is None or ci[0] <= 0.0 <= ci[1]
    return {**out, "mean_pct": mean, "ci95_pct": ci, "min_pct": float(diffs.min()),
            "max_pct": float(diffs.max()), "inside_spread": inside}


def _real_stage(cfg: DictConfig, run_dir: Path) -> tuple[str, float]:
    """``real_repeats`` ABBA-ordered pairs of the real run; returns (markdown, wall seconds)."""
    from omegaconf import open_dict

    from elis.experiments.run import run as exp_run

    t0 = time.perf_counter()
    reps = int(cfg.real_repeats)
    rows: list[dict] = []
    first_cfg = None
    names: list[str] = []
    for pair in range(reps):
        seed = int(cfg.seed) + pair
        pcfg = _experiment_cfg(cfg, run_dir, list(cfg.real), float(cfg.real_load_factor),
                               f"real/pair{pair}", seed=seed)
        variants = [dict(v) for v in OmegaConf.to_container(pcfg.compare.variants, resolve=True)]
        names = [v["name"] for v in variants]
        order = variants if pair % 2 == 0 else variants[::-1]
        for k, v in enumerate(order):
            vcfg = pcfg.copy()
            with open_dict(vcfg):
                vcfg.compare.variants = [v]
                vcfg.paths.output_dir = str(run_dir / "real" / f"pair{pair}" / v["name"])
                vcfg.plots = False
            i = pair * len(order) + k + 1
            print(f"[4/4] real run {i}/{reps * len(order)}: {v['name']} (pair {pair + 1}/{reps}, "
                  f"seed {seed}, {vcfg.num_requests} requests at {float(vcfg.workload.rate_rps):.3f} req/s) ...",
                  flush=True)
            ts = time.perf_counter()
            m = exp_run(vcfg)[v["name"]]
            wall = time.perf_counter() - ts
            n, realised = _realised_rate(Path(vcfg.paths.output_dir))
            rows.append({"pair": pair, "position": k + 1, "variant": v["name"], "seed": seed,
                         "jct_mean_s": m.get("jct_mean_s"), "jct_p99_s": m.get("jct_p99_s"),
                         "num_finished": m.get("num_finished"), "num_failed": m.get("num_failed"),
                         "num_preemptions": m.get("num_preemptions"), "realised_rps": realised,
                         "wall_s": wall})
            jct = m.get("jct_mean_s")
            print(f"      done in {wall:.0f} s: mean JCT {'n/a' if jct is None else f'{jct:.2f} s'}, "
                  f"{m.get('num_finished')} finished, {m.get('num_failed')} failed", flush=True)
            first_cfg = first_cfg or vcfg
    wall_s = time.perf_counter() - t0
    summ = paired_summary(rows, names[0], names[-1])
    (run_dir / "real" / "summary.json").write_text(json.dumps({"runs": rows, "paired": summ}, indent=2))
    return _real_markdown(rows, summ, names, first_cfg, run_dir, reps), wall_s


def _real_markdown(rows, summ, names, ecfg, run_dir: Path, reps: int) -> str:
    f = lambda v, d=2: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [_section_header(ecfg, run_dir / "real" / "pair0" / names[0],
                             f"{reps} pair(s) of runs (pair i uses seed {ecfg.seed}+i)"), "",
             "| pair | order | variant | mean JCT (s) | p99 JCT (s) | finished | failed | preemptions | realised req/s | wall (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pair'] + 1} | {r['position']} | {r['variant']} | {f(r['jct_mean_s'])} | "
                     f"{f(r['jct_p99_s'])} | {r['num_finished']} | {r['num_failed']} | "
                     f"{r['num_preemptions']} | {f(r['realised_rps'], 3)} | {r['wall_s']:.0f} |")
    lines.append("")
    a, b = names[0], names[-1]
    if summ["mean_pct"] is None:
        lines.append(f"No pair had both {a} and {b} finish requests: no comparison.")
    else:
        ci = summ["ci95_pct"]
        ci_s = "n/a (one pair)" if ci is None else f"[{ci[0]:+.1f}%, {ci[1]:+.1f}%]"
        lines.append(f"Mean JCT of {b} vs {a}, paired by workload: {summ['mean_pct']:+.1f}% on average "
                     f"over {summ['n']} pair(s) (per pair: {', '.join(f'{d:+.1f}%' for d in summ['diffs_pct'])}; "
                     f"95% interval {ci_s}).")
        if summ["inside_spread"]:
            lines.append("**Inside the spread:** the interval contains 0, so this run does not show "
                         f"that {b} is faster or slower than {a} on this machine; the differences "
                         "above are CPU drift and workload noise. The real run checks that the real "
                         "engine path works; the policy comparison is the simulator's section.")
        else:
            lines.append(f"The interval excludes 0: over these {summ['n']} pairs the difference is "
                         "larger than the drift between pairs.")
    return "\n".join(lines) + "\n"


def _sim_seeds_stage(cfg: DictConfig, run_dir: Path, first: dict) -> str:
    """Rerun the simulated comparison with seeds seed+1 … seed+sim_seeds−1 (other workloads:
    requests and arrivals) and tabulate each variant's mean-JCT change vs windowed FCFS with
    its spread over the seeds; a change whose interval contains 0 is marked as not shown."""
    from omegaconf import open_dict

    from elis.experiments.run import run as exp_run

    n = int(cfg.sim_seeds)
    if n < 2:
        return ""
    rows = [{"pair": 0, "variant": k, "jct_mean_s": m.get("jct_mean_s")}
            for k, m in first.items() if isinstance(m, dict)]
    for i in range(1, n):
        seed = int(cfg.seed) + i
        print(f"[3/4] simulated comparison, seed {seed} ({i + 1}/{n}) ...", flush=True)
        ecfg = _experiment_cfg(cfg, run_dir, list(cfg.experiment), float(cfg.load_factor),
                               f"experiment_seed{seed}", seed=seed)
        with open_dict(ecfg):
            ecfg.plots = False
        rows += [{"pair": i, "variant": k, "jct_mean_s": m.get("jct_mean_s")}
                 for k, m in exp_run(ecfg).items() if isinstance(m, dict)]
    base = "fcfs_windowed"
    names = [r["variant"] for r in rows if r["pair"] == 0 and r["variant"] != base]
    lines = [f"Mean JCT change vs windowed FCFS over {n} seeds ({cfg.seed}…{int(cfg.seed) + n - 1}: "
             "each seed draws other requests and arrival times; 95% t-interval over seeds):", "",
             "| variant | per seed | mean | 95% interval | shown? |", "|---|---|---|---|---|"]
    summary = {}
    for name in names:
        s = paired_summary(rows, base, name)
        summary[name] = s
        if s["mean_pct"] is None:
            lines.append(f"| {name} | n/a | n/a | n/a | no |")
            continue
        ci = s["ci95_pct"]
        lines.append(f"| {name} | {', '.join(f'{d:+.1f}%' for d in s['diffs_pct'])} | {s['mean_pct']:+.1f}% | "
                     f"{'n/a' if ci is None else f'[{ci[0]:+.1f}%, {ci[1]:+.1f}%]'} | "
                     f"{'no: inside the spread' if s['inside_spread'] else 'yes'} |")
    (run_dir / "experiment_seeds.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    return "\n".join(lines) + "\n"


def _predictor_plots(pred: dict, cfg: DictConfig, run_dir: Path) -> str:
    model_dir = Path(pred.get("model_ckpt", "")).parent if pred.get("model_ckpt") else None
    for d in (run_dir / "train" / "plots", (model_dir / "plots") if model_dir else None):
        if d is not None and d.is_dir() and any(d.glob("*.png")):
            return _plot_links(d, run_dir)
    return "Plots: none found."


def job(cfg: DictConfig) -> None:
    """Run the four stages and write ``report.md``; see the module docstring."""
    from elis.data.build import format_summary
    from elis.data.build import run as build_run

    from elis.cli import UserError

    for key in ("load_factor", "real_load_factor"):
        if not isinstance(cfg[key], (int, float)) or isinstance(cfg[key], bool) or not cfg[key] > 0:
            raise UserError(f"{key}={cfg[key]!r} is not allowed: {key} must be a number > 0")
    if not isinstance(cfg.sim_seeds, int) or cfg.sim_seeds < 1:
        raise UserError(f"sim_seeds={cfg.sim_seeds!r} is not allowed: it must be an integer >= 1")
    if cfg.real_run and (not isinstance(cfg.real_repeats, int) or cfg.real_repeats < 1):
        raise UserError(f"real_repeats={cfg.real_repeats!r} is not allowed: it must be an integer >= 1 "
                        "(or real_run=false)")
    t0 = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    print(f"[1/4] building dataset data={cfg.data} ...", flush=True)
    manifest = build_run(_stage_cfg("build_dataset", [f"data={cfg.data}", *cfg.build],
                                    run_dir / "build_dataset"))
    print(format_summary(manifest))
    pred = _train_stage(cfg, run_dir, manifest)
    print(_predictor_table(pred))
    print("[3/4] simulated comparison (all policies, windowed and continuous) ...", flush=True)
    t_sim = time.perf_counter()
    sim_res, sim_dir, sim_cfg = _experiment_stage(cfg, run_dir, list(cfg.experiment),
                                                  float(cfg.load_factor), "experiment")
    sim_md = (sim_dir / "comparison.md").read_text()
    print(sim_md)
    seeds_md = _sim_seeds_stage(cfg, run_dir, sim_res)
    print(seeds_md)
    sim_s = time.perf_counter() - t_sim
    real_md, real_s = None, 0.0
    if cfg.real_run:
        print(f"[4/4] short real run on SmolLM2 (worker=hf): {cfg.real_repeats} pairs of FCFS and "
              "ISRTF, alternating order ...", flush=True)
        real_md, real_s = _real_stage(cfg, run_dir)
        print(real_md)
    total = time.perf_counter() - t0
    report = run_dir / "report.md"
    share = f"; the real run took {real_s:.0f} s ({100 * real_s / total:.0f}% of it)" if cfg.real_run else ""
    parts = [
        "# ELIS main job report", "",
        f"Dataset `{cfg.data}`, predictor `{cfg.predictor}`, seed {cfg.seed}; wall time "
        f"{total:.0f} s (simulated comparison {sim_s:.0f} s{share}).", "",
        "## Dataset", "", "```", format_summary(manifest), "```", "",
        "## Predictor (test split)", "", _predictor_table(pred), _predictor_plots(pred, cfg, run_dir), "",
        "## Scheduling comparison (simulator)", "",
        _section_header(sim_cfg, sim_dir, "Simulated workload"), "", sim_md, seeds_md,
        "Short/long JCT: mean JCT of the requests in the lowest/highest third of true output "
        "length. Each cell: value (change vs windowed FCFS / change vs continuous FCFS). "
        "The simulator is deterministic: the same seed gives the same table.", "",
        _plot_links(sim_dir / "plots", run_dir), "",
    ]
    if real_md:
        parts += ["## Real run (SmolLM2-135M on this CPU, worker=hf)", "", real_md]
    report.write_text("\n".join(parts) + "\n")
    print(f"Done in {total:.0f} s. Report: {report}")


@hydra.main(config_path="../conf", config_name="main", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """``make run``: the four stages, with one-line user errors (see ``elis.cli``)."""
    run_entry(job, cfg, "main")


if __name__ == "__main__":
    precheck("main")
    main()
