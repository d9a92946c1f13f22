"""W&B logging of finished run folders, offline (no account, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elis.experiments import tracking


def _run_dir(root: Path) -> Path:
    """A compare-style run folder: config, two variants, comparison.csv, one plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root.mkdir(parents=True)
    (root / "config.yaml").write_text("seed: 0\ntask_name: run_experiment\nnum_workers: 1\n")
    for name, jct in (("fcfs_windowed", 10.0), ("isrtf_windowed", 8.0)):
        d = root / "variants" / name
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"jct_mean_s": jct, "ttft_mean_s": None, "variant": {"policy": name},
                                                    "length_bucket_edges_tokens": [1, 2]}))
    (root / "comparison.csv").write_text("name,jct_mean_s\nfcfs_windowed,10.0\nisrtf_windowed,8.0\n")
    (root / "plots").mkdir()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    fig.savefig(root / "plots" / "jct_cdf.png")
    plt.close(fig)
    return root


def test_flatten_numbers_keeps_finite_numbers_only():
    d = {"a": 1, "b": {"c": 2.5, "d": None, "e": [1, 2], "f": float("nan"), "g": True}, "h": "x"}
    assert tracking.flatten_numbers(d) == {"a": 1, "b/c": 2.5, "b/g": 1}


def test_collect_metrics_and_tables(tmp_path):
    root = _run_dir(tmp_path / "run")
    m = tracking.collect_metrics(root)
    assert m == {"fcfs_windowed/jct_mean_s": 10.0, "isrtf_windowed/jct_mean_s": 8.0}
    t = tracking.collect_tables(root)
    assert list(t) == ["comparison"] and t["comparison"]["jct_mean_s"].tolist() == [10.0, 8.0]


def test_training_metrics_give_per_step_table(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"eval": {"test": {"overall": {"r2": 0.7}, "per_step": {
        "groups": {"1": {"n": 3, "mae": 20.0}, "0": {"n": 4, "mae": 50.0}}}}}}))
    t = tracking.collect_tables(tmp_path)["per_step/test"]
    assert t["step"].tolist() == [0, 1] and t["mae"].tolist() == [50.0, 20.0]
    assert tracking.collect_metrics(tmp_path)["eval/test/overall/r2"] == 0.7


def test_offline_run_folder_written(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    root = _run_dir(tmp_path / "run")
    extra = root / "plots" / "jct_cdf.png"
    r = tracking.log_run_dir(root, project="elis-test", figures=[extra])
    assert r.mode == "offline" and r.num_metrics == 2
    assert r.tables == ["comparison"] and r.images == ["plots/jct_cdf"]
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert runs == [r.path]
    assert len(list(r.path.glob("run-*.wandb"))) == 1  # the offline transaction log `wandb sync` uploads
    media = list((r.path / "files" / "media").rglob("*"))
    assert any(p.suffix == ".png" for p in media) and any(p.name.endswith(".table.json") for p in media)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tracking.log_run_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nothing to log"):
        tracking.log_run_dir(tmp_path)
    root = _run_dir(tmp_path / "run")
    with pytest.raises(ValueError, match="mode='cloud'"):
        tracking.log_run_dir(root, mode="cloud")
    with pytest.raises(FileNotFoundError, match="figures not found"):
        tracking.log_run_dir(root, mode="offline", figures=[tmp_path / "missing.png"])
