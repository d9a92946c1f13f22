"""run_experiment end to end on a tiny dataset in tmp_path, via the real Hydra configs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from serving_factories import write_tiny_dataset  # noqa: E402

from elis.config import CONFIG_DIR  # noqa: E402
from elis.experiments.run import run  # noqa: E402

BASE = ["data.name=tiny", "num_requests=30", "max_tokens=200", "workload.rate_rps=2.0", "num_workers=2", "plots=false"]


@pytest.fixture
def tiny(tmp_path):
    write_tiny_dataset(tmp_path / "data")
    return tmp_path


def test_single_run_writes_records_and_metrics(tiny, compose_cfg):
    cfg = compose_cfg("run_experiment", BASE + ["sched=isrtf", "predictor=noisy_oracle"])
    out = run(cfg)
    d = Path(out["output_dir"])
    rec = pd.read_parquet(d / "requests.parquet")
    m = json.loads((d / "metrics.json").read_text())
    assert len(rec) == 30 and m["num_finished"] == 30
    assert (rec["num_output_tokens"] == rec["true_num_output_tokens"].clip(upper=200)).all()
    for k in ("jct_mean_s", "jct_p99_s", "ttft_p90_s", "tpot_p50_s", "queuing_delay_mean_s", "request_throughput_rps"):
        assert m[k] is not None
    assert (d / "workload.parquet").exists() and (d / "config.yaml").exists()


def test_same_seed_identical_records_other_seed_differs(tiny, compose_cfg):
    def records(seed, sub):
        cfg = compose_cfg("run_experiment", BASE + [f"seed={seed}", f"paths.output_dir={tiny / sub}"])
        run(cfg)
        return pd.read_parquet(tiny / sub / "requests.parquet")

    a, b, c = records(0, "a"), records(0, "b"), records(1, "c")
    pd.testing.assert_frame_equal(a, b)
    assert not a["arrival_time_s"].equals(c["arrival_time_s"])


def test_compare_preset_writes_table_and_plots(tiny, compose_cfg):
    cfg = compose_cfg("run_experiment", BASE + ["preset=compare", "plots=true", "num_requests=24"])
    out = run(cfg)
    d = Path(out["output_dir"])
    names = {k for k in out if k != "output_dir"}
    assert names == {f"{p}_{m}" for p in ("fcfs", "sjf", "isrtf", "srtf_oracle", "las", "mlfq", "gittins")
                     for m in ("windowed", "continuous")}
    # identical workload for every variant
    arrivals = {n: pd.read_parquet(d / "variants" / n / "requests.parquet").sort_values("request_id")
                ["arrival_time_s"].tolist() for n in names}
    assert len({tuple(v) for v in arrivals.values()}) == 1
    md = (d / "comparison.md").read_text()
    assert "isrtf_continuous" in md and "Share of oracle-SRTF" in md and "realised" in md
    csv = pd.read_csv(d / "comparison.csv")
    assert set(csv["name"]) == names and "jct_mean_s_vs_fcfs_continuous_pct" in csv
    for p in ("jct_cdf.png", "jct_by_bucket.png", "queuing_delay.png"):
        assert (d / "plots" / p).stat().st_size > 0


def test_sweep_preset_plots_jct_vs_rate(tiny, compose_cfg):
    cfg = compose_cfg("run_experiment", BASE + ["preset=sweep", "sweep.rates_rps=[1.0,4.0]", "plots=true",
                                                "num_requests=12"])
    run(cfg)
    d = Path(cfg.paths.output_dir)
    assert (d / "plots" / "jct_vs_rate.png").exists()
    assert (d / "rates" / "4" / "comparison.md").exists()


def test_trace_workload_with_trace_lengths(tmp_path, compose_cfg):
    csv = tmp_path / "trace.csv"
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                   "2023-11-16 18:15:46.6805900,10,3\n2023-11-16 18:15:47.1805900,20,0\n"
                   "2023-11-16 18:15:48.6805900,5,7\n")
    cfg = compose_cfg("run_experiment", ["workload=azure_conv", f"workload.path={csv}", "workload.time_scale=2.0",
                                         "workload.use_trace_lengths=true", "num_requests=3", "plots=false",
                                         "sched=srtf_oracle", "load_balancer=round_robin"])
    run(cfg)
    wl = pd.read_parquet(Path(cfg.paths.output_dir) / "workload.parquet")
    assert wl["arrival_time_s"].tolist() == pytest.approx([0.0, 0.25, 1.0])
    assert wl["num_output_tokens"].tolist() == [3, 0, 7]


def test_missing_dataset_names_build_command(tmp_path, compose_cfg):
    cfg = compose_cfg("run_experiment", ["data.name=nope", "plots=false"])
    with pytest.raises(FileNotFoundError, match="build_dataset.py data=nope"):
        run(cfg)


@pytest.mark.parametrize("group", ["sched", "workload", "load_balancer", "cost_model", "worker", "preset"])
def test_every_group_option_composes(group, compose_cfg):
    import hydra.utils

    for f in sorted((CONFIG_DIR / group).glob("*.yaml")):
        cfg = compose_cfg("run_experiment", [f"{group}={f.stem}"])
        if group in ("load_balancer", "cost_model"):
            hydra.utils.instantiate(cfg[group])


def test_wandb_offline_logging(tiny, compose_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_cfg("run_experiment", BASE + ["num_requests=6", "+wandb.project=elis-test", "+wandb.mode=offline"])
    run(cfg)
    assert list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))


def test_compare_seeds_table_mean_and_interval_over_seeds(tiny, compose_cfg):
    variants = ("compare.variants=[{name: fcfs_windowed, policy: fcfs, mode: windowed, preemption: false},"
                "{name: isrtf_windowed, policy: isrtf, mode: windowed},"
                "{name: srtf_oracle_windowed, policy: srtf_oracle, mode: windowed}]")
    cfg = compose_cfg("run_experiment", BASE + ["preset=compare", variants, "compare.seeds=[0,1,2]", "num_workers=1"])
    out = run(cfg)
    d = Path(out["output_dir"])
    per_seed = {s: json.loads((d / "seeds" / str(s) / "variants" / "isrtf_windowed" / "metrics.json").read_text())
                for s in (0, 1, 2)}
    assert [m["seed"] for m in per_seed.values()] == [0, 1, 2]
    assert per_seed[0]["requested_rate_rps"] == 2.0 and per_seed[0]["offered_rate_rps"] != 2.0  # realised
    tab = pd.read_csv(d / "comparison.csv").set_index("name")
    jct = [m["jct_mean_s"] for m in per_seed.values()]
    assert tab.loc["isrtf_windowed", "jct_mean_s_mean"] == pytest.approx(sum(jct) / 3)
    sd = pd.Series(jct).std(ddof=1)
    assert tab.loc["isrtf_windowed", "jct_mean_s_ci95"] == pytest.approx(4.302652729911275 * sd / 3 ** 0.5)
    # the oracle captures all of its own gain, FCFS none, on every seed
    assert tab.loc["srtf_oracle_windowed", "oracle_gain_share_mean"] == pytest.approx(1.0)
    assert tab.loc["fcfs_windowed", "oracle_gain_share_mean"] == pytest.approx(0.0)
    md = (d / "comparison.md").read_text()
    assert "95% Student-t interval over 3 seeds" in md and "realised" in md


def test_run_where_nothing_finishes_writes_correct_metrics(tiny, compose_cfg):
    # Issue 11 item 12: kv_capacity_tokens=1 -> every request is rejected at arrival with a reason.
    from elis.experiments.report import no_completion_message

    cfg = compose_cfg("run_experiment", BASE + ["num_requests=6", "worker.kv_capacity_tokens=1"])
    out = run(cfg)
    d = Path(out.pop("output_dir"))
    m = json.loads((d / "metrics.json").read_text())
    assert (m["num_requests"], m["num_finished"], m["num_failed"]) == (6, 0, 6)
    assert m["jct_mean_s"] is None and m["ttft_mean_s"] is None and m["tpot_mean_s"] is None
    assert list(m["fail_reasons"].values()) == [6] and "kv_capacity_tokens=1" in next(iter(m["fail_reasons"]))
    rec = pd.read_parquet(d / "requests.parquet")
    assert (rec["status"] == "FAILED").all() and rec["jct_s"].isna().all() and rec["ttft_s"].isna().all()
    assert no_completion_message(out) is not None


def test_every_sched_option_builds_its_policy_class(compose_cfg):
    # each conf/sched/*.yaml builds the policy class its `policy` names, with its policy_params
    from elis.experiments.run import build_schedulers, variants_of
    from elis.predictor.simple import NoisyOraclePredictor
    from elis.serving.cost_model import CostModel
    from elis.serving.prediction import PredictionService

    pred = PredictionService(NoisyOraclePredictor(), latency_source="zero")
    for f in sorted((CONFIG_DIR / "sched").glob("*.yaml")):
        cfg = compose_cfg("run_experiment", [f"sched={f.stem}"])
        (_, sched), = variants_of(cfg)
        s = build_schedulers(sched, 1, 4, 50, None, pred, CostModel())[0]
        assert s.policy.name == cfg.sched.policy and s.mode == cfg.sched.mode, f.stem


def test_sim_path_auto_runs_the_fast_path_with_the_general_paths_records(tiny, compose_cfg, caplog):
    import logging

    def run_path(path):
        sub = tiny / f"path-{path}"
        cfg = compose_cfg("run_experiment", BASE + ["sched=isrtf", f"worker.sim_path={path}", f"paths.output_dir={sub}"])
        with caplog.at_level(logging.INFO, logger="elis.serving.runtime"):
            run(cfg)
        return pd.read_parquet(sub / "requests.parquet"), json.loads((sub / "metrics.json").read_text())

    fast, m_fast = run_path("auto")
    assert m_fast["sim_path"] == "fast" and "simulation path: fast" in caplog.text
    general, m_general = run_path("general")
    assert m_general["sim_path"] == "general"
    pd.testing.assert_frame_equal(fast, general, check_exact=True)
    caplog.clear()
    cfg = compose_cfg("run_experiment", BASE + ["sched=isrtf", "worker.kv_capacity_tokens=100000",
                                                f"paths.output_dir={tiny / 'kv'}"])
    with caplog.at_level(logging.INFO, logger="elis.serving.runtime"):
        run(cfg)
    assert "simulation path: general (fast path not used: worker.kv_capacity_tokens" in caplog.text


def test_compare_skips_a_variant_the_predictor_cannot_serve_and_reports_it(tiny, compose_cfg):
    # prompt_length gives no predictive distribution: gittins cannot run, the rest of the
    # comparison (e.g. make run with the learned MLP) must still run and say what was skipped
    variants = ("compare.variants=[{name: fcfs_windowed, policy: fcfs, mode: windowed, preemption: false},"
                "{name: isrtf_windowed, policy: isrtf, mode: windowed},"
                "{name: gittins_windowed, policy: gittins, mode: windowed}]")
    cfg = compose_cfg("run_experiment", BASE + ["preset=compare", variants, "predictor=prompt_length", "num_requests=8"])
    out = run(cfg)
    d = Path(out["output_dir"])
    assert {k for k in out if k != "output_dir"} == {"fcfs_windowed", "isrtf_windowed"}
    skipped = json.loads((d / "skipped_variants.json").read_text())
    assert list(skipped) == ["gittins_windowed"] and "predict_quantiles" in skipped["gittins_windowed"]
    assert "Skipped gittins_windowed: policy 'gittins' needs a predictive distribution" in (d / "comparison.md").read_text()
    # a single gittins run with that predictor still fails, naming the predictor
    single = compose_cfg("run_experiment", BASE + ["sched=gittins", "predictor=prompt_length", "num_requests=8"])
    with pytest.raises(ValueError, match="prompt_length"):
        run(single)
