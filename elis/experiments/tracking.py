"""Log a finished run folder to Weights & Biases (issue 6 §4): offline by default, no account needed.

``log_run_dir(run_dir)`` reads what the pipeline already wrote and logs, to one W&B run:

- config: ``config.yaml`` (the resolved Hydra config) → ``run.config``;
- metrics: every number in ``metrics.json`` at the top (train / single runs) and in
  ``[rates/<rate>/]variants/<name>/metrics.json`` → ``run.summary`` with ``/``-joined keys
  (``isrtf_windowed/jct_mean_s``, ``rate0.45/fcfs_windowed/jct_mean_s``,
  ``eval/test/overall/r2``);
- tables: ``[rates/<rate>/]comparison.csv`` → ``wandb.Table`` ``comparison`` (``comparison/rate<r>``),
  and for a training run the per-step metrics of each evaluated split → ``per_step/<split>``;
- figures: ``plots/*.png`` plus any extra ``figures`` → ``wandb.Image`` under ``plots/<stem>``.

Mode: ``mode`` argument, else ``$WANDB_MODE``, else ``offline``. Files go to ``dir`` argument,
else ``$WANDB_DIR``, else ``run_dir`` (W&B writes ``<dir>/wandb/offline-run-<time>-<id>/``);
upload later with ``wandb sync <that folder>``.

CLI: ``python -m elis.experiments.tracking RUN_DIR [--figure PNG ...] [--project elis] [--name N] [--dir D]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(slots=True)
class LoggedRun:
    """What ``log_run_dir`` logged: the local W&B run folder and counts of each kind."""

    path: Path
    mode: str
    num_metrics: int
    tables: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)


def flatten_numbers(d: dict[str, Any], prefix: str = "") -> dict[str, float | int]:
    """Nested dict → ``{"a/b/c": number}`` keeping finite ints/floats (bools as ints); lists skipped."""
    out: dict[str, float | int] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_numbers(v, key + "/"))
        elif isinstance(v, bool):
            out[key] = int(v)
        elif isinstance(v, (int, float)) and not (isinstance(v, float) and not math.isfinite(v)):
            out[key] = v
    return out


def collect_metrics(run_dir: str | Path) -> dict[str, float | int]:
    """Every number of a run folder's metrics files, keyed as in the module docstring."""
    root = Path(run_dir)
    out: dict[str, float | int] = {}
    if (root / "metrics.json").exists():
        out.update(flatten_numbers(json.loads((root / "metrics.json").read_text())))
    for f in sorted(root.glob("variants/*/metrics.json")):
        out.update(flatten_numbers(json.loads(f.read_text()), f"{f.parent.name}/"))
    for f in sorted(root.glob("rates/*/variants/*/metrics.json")):
        rate = f.parent.parent.parent.name
        out.update(flatten_numbers(json.loads(f.read_text()), f"rate{rate}/{f.parent.name}/"))
    return out


def collect_tables(run_dir: str | Path) -> dict[str, Any]:
    """``{table name: pandas.DataFrame}``: comparison CSVs and a training run's per-step metrics."""
    import pandas as pd

    root = Path(run_dir)
    tables: dict[str, Any] = {}
    if (root / "comparison.csv").exists():
        tables["comparison"] = pd.read_csv(root / "comparison.csv")
    for f in sorted(root.glob("rates/*/comparison.csv")):
        tables[f"comparison/rate{f.parent.name}"] = pd.read_csv(f)
    if (root / "metrics.json").exists():
        m = json.loads((root / "metrics.json").read_text())
        for split, res in (m.get("eval") or {}).items():
            groups = (res.get("per_step") or {}).get("groups") or {}
            if groups:
                rows = [{"step": int(k), **{c: v.get(c) for c in ("n", "mae", "rmse", "r2", "kendall_tau")}}
                        for k, v in groups.items()]
                tables[f"per_step/{split}"] = pd.DataFrame(rows).sort_values("step").reset_index(drop=True)
    return tables


def log_run_dir(
    run_dir: str | Path, *, project: str = "elis", name: str | None = None, mode: str | None = None,
    dir: str | Path | None = None, tags: list[str] | None = None, job_type: str | None = None,
    figures: list[str | Path] = (),
) -> LoggedRun:
    """Log ``run_dir`` (config, metrics, tables, figures) to one W&B run and finish it.

    Args:
        run_dir: a folder written by ``run_experiment.py`` or ``train.py`` (or a model folder).
        project, name, tags, job_type: passed to ``wandb.init`` (name defaults to the folder name).
        mode: 'offline' | 'online' | 'disabled'; default ``$WANDB_MODE`` or 'offline'.
        dir: where W&B writes its ``wandb/`` folder; default ``$WANDB_DIR`` or ``run_dir``.
        figures: extra PNGs (e.g. the paper figures in ``docs/figures``).

    Returns:
        ``LoggedRun`` with the local W&B run folder (``.../wandb/offline-run-*`` offline).

    Raises:
        FileNotFoundError: ``run_dir`` or a listed figure does not exist, or the folder holds
            neither ``config.yaml`` nor any ``metrics.json`` (nothing to log).
        ValueError: ``mode`` not one of offline/online/disabled.
    """
    import wandb
    from omegaconf import OmegaConf

    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run_dir {str(root)!r} does not exist")
    mode = mode or os.environ.get("WANDB_MODE") or "offline"
    if mode not in ("offline", "online", "disabled"):
        raise ValueError(f"mode={mode!r} is not one of ['offline', 'online', 'disabled']")
    missing = [str(f) for f in figures if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"figures not found: {missing}")
    metrics = collect_metrics(root)
    has_cfg = (root / "config.yaml").exists()
    if not metrics and not has_cfg:
        raise FileNotFoundError(f"{root} holds no config.yaml and no metrics.json: nothing to log")
    config = OmegaConf.to_container(OmegaConf.load(root / "config.yaml"), resolve=False) if has_cfg else {}
    wdir = Path(dir or os.environ.get("WANDB_DIR") or root)
    wdir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, name=name or root.name, mode=mode, dir=str(wdir), config=config,
                     tags=list(tags or []), job_type=job_type, reinit="finish_previous")
    try:
        run.summary.update(metrics)
        tables = collect_tables(root)
        payload: dict[str, Any] = {k: wandb.Table(dataframe=df) for k, df in tables.items()}
        pngs = sorted(root.glob("plots/*.png")) + [Path(f) for f in figures]
        images = {f"plots/{p.stem}": wandb.Image(str(p)) for p in pngs}
        payload.update(images)
        if payload:
            run.log(payload)
        path = Path(run.dir).parent if mode != "disabled" else wdir
    finally:
        run.finish()
    log.info("W&B (%s): %d metrics, %d tables, %d images -> %s", mode, len(metrics), len(tables), len(images), path)
    return LoggedRun(path=path, mode=mode, num_metrics=len(metrics), tables=sorted(tables), images=sorted(images))


def main(argv: list[str] | None = None) -> int:
    """Log run folders to W&B; prints each local run folder and the ``wandb sync`` command."""
    ap = argparse.ArgumentParser(prog="python -m elis.experiments.tracking")
    ap.add_argument("run_dir", type=Path, nargs="+")
    ap.add_argument("--project", default="elis")
    ap.add_argument("--name", default=None)
    ap.add_argument("--mode", default=None, choices=["offline", "online", "disabled"])
    ap.add_argument("--figure", type=Path, nargs="*", default=[])
    ap.add_argument("--dir", type=Path, default=None, help="where W&B writes wandb/ (default $WANDB_DIR or RUN_DIR)")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    for d in a.run_dir:
        r = log_run_dir(d, project=a.project, name=a.name, mode=a.mode, dir=a.dir, figures=a.figure)
        print(f"{d}: {r.num_metrics} metrics, tables {r.tables}, {len(r.images)} images -> {r.path}")
        if r.mode == "offline":
            print(f"  upload later: wandb sync {r.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
