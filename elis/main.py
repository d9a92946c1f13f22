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

from elis.config import register_resolvers
from elis.serving.cost_model import estimate_capacity_rps

log = logging.getLogger(__name__)
register_resolvers()


def _stage_cfg(name: str, overrides: list[str], out_dir: Path) -> DictConfig:
    cfg = compose(config_name=name, overrides=[*overrides, f"paths.output_dir={out_dir}"])
    return cfg


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


def _experiment_stage(cfg: DictConfig, run_dir: Path, overrides: list[str],
                      load_factor: float, sub: str) -> tuple[dict, Path]:
    from hydra.utils import instantiate
    from omegaconf import open_dict

    from elis.experiments.run import load_samples
    from elis.experiments.run import run as exp_run

    base = [f"data={cfg.data}", f"predictor={cfg.predictor}", f"seed={cfg.seed}"]
    ecfg = _stage_cfg("run_experiment", [*base, *overrides], run_dir / sub)
    split = load_samples(Path(ecfg.paths.data_dir) / ecfg.data.name, ecfg.split)
    cap = estimate_capacity_rps(
        instantiate(ecfg.cost_model), float(split["num_prompt_tokens"].mean()),
        float(split["num_output_tokens"].mean()), int(ecfg.max_batch_size),
    ) * int(ecfg.num_workers)
    rate = round(load_factor * cap, 4)
    with open_dict(ecfg):
        ecfg.workload.rate_rps = rate
    log.info("%s: capacity ≈ %.3f req/s → rate %.3f req/s (load factor %.2f)", sub, cap, rate, load_factor)
    return exp_run(ecfg), Path(ecfg.paths.output_dir)


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


@hydra.main(config_path="../conf", config_name="main", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run the four stages and write ``report.md``; see the module docstring."""
    from elis.data.build import format_summary
    from elis.data.build import run as build_run

    t0 = time.perf_counter()
    run_dir = Path(cfg.paths.output_dir)
    print(f"[1/4] building dataset data={cfg.data} ...")
    manifest = build_run(_stage_cfg("build_dataset", [f"data={cfg.data}", *cfg.build],
                                    run_dir / "build_dataset"))
    print(format_summary(manifest))
    pred = _train_stage(cfg, run_dir, manifest)
    print(_predictor_table(pred))
    print("[3/4] simulated comparison (all policies, windowed and continuous) ...")
    _, sim_dir = _experiment_stage(cfg, run_dir, list(cfg.experiment),
                                   float(cfg.load_factor), "experiment")
    sim_md = (sim_dir / "comparison.md").read_text()
    print(sim_md)
    real_md = None
    if cfg.real_run:
        print("[4/4] short real run on SmolLM2 (worker=hf) ...")
        _, real_dir = _experiment_stage(cfg, run_dir, list(cfg.real),
                                        float(cfg.real_load_factor), "real")
        real_md = (real_dir / "comparison.md").read_text()
        print(real_md)
    report = run_dir / "report.md"
    parts = [
        "# ELIS main job report", "",
        f"Dataset `{cfg.data}`, predictor `{cfg.predictor}`, seed {cfg.seed}; wall time "
        f"{time.perf_counter() - t0:.0f} s.", "",
        "## Dataset", "", "```", format_summary(manifest), "```", "",
        "## Predictor (test split)", "", _predictor_table(pred),
        "## Scheduling comparison (simulator, calibrated CPU profile)", "", sim_md,
        "Short/long JCT: mean JCT of the requests in the lowest/highest third of true output "
        "length. Each cell: value (change vs windowed FCFS / change vs continuous FCFS).", "",
        "Plots: " + ", ".join(f"`experiment/plots/{p.name}`" for p in sorted((sim_dir / "plots").glob("*.png"))),
        "",
    ]
    if real_md:
        parts += ["## Real run (SmolLM2-135M on this CPU, worker=hf)", "", real_md]
    report.write_text("\n".join(parts) + "\n")
    print(f"Done in {time.perf_counter() - t0:.0f} s. Report: {report}")


if __name__ == "__main__":
    main()
