"""User-facing behaviour of run_experiment / main: sizes, predictor choice, results, report CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from serving_factories import write_tiny_dataset  # noqa: E402

from elis.cli import UserError  # noqa: E402
from elis.experiments.run import choose_predictor, resolve_predictor, run  # noqa: E402

BASE = ["data.name=tiny", "num_requests=6", "max_tokens=200", "workload.rate_rps=2.0", "plots=false"]


@pytest.mark.parametrize("override,shown", [
    ("num_requests=0", "num_requests=0"), ("max_tokens=null", "max_tokens=None"),
    ("max_batch_size=-1", "max_batch_size=-1"), ("window_tokens=2.5", "window_tokens=2.5"),
])
def test_impossible_sizes_name_the_key(tmp_path, compose_cfg, override, shown):
    write_tiny_dataset(tmp_path / "data")
    cfg = compose_cfg("run_experiment", [*BASE, override])
    with pytest.raises(UserError, match=f"^{shown} is not allowed"):
        run(cfg)
    assert not (tmp_path / "out" / "requests.parquet").exists()


def test_choose_predictor_first_existing_artefact(tmp_path):
    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    b.write_bytes(b"x")
    assert choose_predictor([("minilm", a), ("bge", b)], "noisy_oracle") == ("bge", f"its trained artefact {b} exists")
    name, reason = choose_predictor([("minilm", a), ("gbdt", None)], "noisy_oracle")
    assert name == "noisy_oracle" and str(a) in reason


def test_auto_predictor_uses_trained_checkpoint_when_present(tmp_path, compose_cfg, caplog):
    cfg = compose_cfg("run_experiment", ["data.name=tiny"])
    assert cfg.predictor.name == "auto"
    with caplog.at_level("WARNING"):
        fallback = resolve_predictor(cfg)
    assert fallback.predictor.name == "noisy_oracle" and fallback.predictor_choice["name"] == "noisy_oracle"
    assert "train one with `python train.py predictor=gbdt data=tiny`" in caplog.text
    ckpt = tmp_path / "models" / "minilm-tiny" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    chosen = resolve_predictor(cfg)
    assert chosen.predictor.name == "minilm" and str(chosen.predictor.runtime.ckpt_path) == str(ckpt)
    assert cfg.predictor.name == "auto"  # the caller's config is not changed


def test_paired_summary_hand_computed():
    from elis.main import paired_summary

    def rows(diffs):  # base 100 s, other 100 + d
        out = []
        for i, d in enumerate(diffs):
            out += [{"pair": i, "variant": "fcfs", "jct_mean_s": 100.0},
                    {"pair": i, "variant": "isrtf", "jct_mean_s": 100.0 + d}]
        return out

    s = paired_summary(rows([10.0, -20.0, 4.0]), "fcfs", "isrtf")
    # mean -2, sd sqrt(252) = 15.875, t(0.975, 2) = 4.3027 → half-width 39.43
    assert s["mean_pct"] == pytest.approx(-2.0) and s["inside_spread"]
    assert s["ci95_pct"][1] - s["mean_pct"] == pytest.approx(4.302653 * 252 ** 0.5 / 3 ** 0.5, rel=1e-5)
    s = paired_summary(rows([-10.0, -12.0, -11.0]), "fcfs", "isrtf")
    # mean -11, sd 1 → half-width 2.484: [-13.48, -8.52] excludes 0
    assert not s["inside_spread"] and s["ci95_pct"][1] == pytest.approx(-11 + 4.302653 / 3 ** 0.5, rel=1e-5)
    assert paired_summary(rows([-30.0]), "fcfs", "isrtf")["inside_spread"]  # one pair proves nothing


def test_report_cli_help_and_missing_folder(tmp_path, capsys):
    from elis.experiments.report import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "RUN_DIR" in capsys.readouterr().out
    assert main([str(tmp_path / "nope")]) == 2
    assert "no metrics.json" in capsys.readouterr().err


def test_format_metrics_prints_each_split():
    from elis.predictor.train import format_metrics

    m = {"task": "evaluate", "predictor": "minilm", "data": "tiny",
         "eval": {"test": {"overall": {"n": 12, "r2": 0.25, "mae": 80.04, "rmse": 99.96},
                           "kendall_tau_step0": float("nan")}}}
    assert format_metrics(m).splitlines() == [
        "evaluate: predictor=minilm data=tiny",
        "  test      rows=12 R2=0.250 MAE=80.0 tokens RMSE=100.0 kendall_tau_step0=n/a"]


def test_real_markdown_shows_runs_spread_and_caveat(tmp_path):
    import pandas as pd
    from omegaconf import OmegaConf

    from elis.main import _real_markdown, paired_summary

    d = tmp_path / "real" / "pair0" / "fcfs_windowed"
    d.mkdir(parents=True)
    pd.DataFrame({"arrival_time_s": [0.0, 5.0, 10.0]}).to_parquet(d / "workload.parquet")
    ecfg = OmegaConf.create({
        "seed": 0, "data": {"name": "embedded"}, "workload": {"kind": "gamma", "cv": 0.0, "rate_rps": 0.2},
        "main_load_factor": 0.6, "main_capacity_rps": 1 / 3, "predictor": {"name": "minilm"},
        "cost_model": {"name": "cpu_smollm2_135m"}, "worker": {"kind": "hf"}, "num_workers": 1,
        "max_batch_size": 4, "window_tokens": 50, "max_tokens": 200})
    rows = [{"pair": p, "position": k, "variant": v, "seed": p, "jct_mean_s": j, "jct_p99_s": None,
             "num_finished": 3, "num_failed": 0, "num_preemptions": 0, "realised_rps": 0.2, "wall_s": 30.0}
            for p, k, v, j in [(0, 1, "fcfs_windowed", 10.0), (0, 2, "isrtf_windowed", 9.0),
                               (1, 1, "isrtf_windowed", 12.0), (1, 2, "fcfs_windowed", 10.0)]]
    summ = paired_summary(rows, "fcfs_windowed", "isrtf_windowed")
    md = _real_markdown(rows, summ, ["fcfs_windowed", "isrtf_windowed"], ecfg, tmp_path, 2)
    assert "3 requests from the `embedded` test split" in md
    assert "rate requested 0.200 req/s (0.60 × the estimated capacity 0.333 req/s), realised 0.200 req/s" in md
    assert "| 2 | 1 | isrtf_windowed | 12.00 | n/a | 3 | 0 | 0 | 0.200 | 30 |" in md
    # per pair −10% and +20%: mean +5%, inside the spread → the plain caveat
    assert "+5.0% on average over 2 pair(s) (per pair: -10.0%, +20.0%" in md and "**Inside the spread:**" in md
