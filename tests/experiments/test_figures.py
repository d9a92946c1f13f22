"""Paper figures and tables (elis/experiments/figures.py): hand-built run folders, hand-computed cells."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from elis.experiments import figures

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from serving_factories import write_tiny_dataset  # noqa: E402


def _variant(d: Path, name: str, policy: str, mode: str, **metrics) -> None:
    d.mkdir(parents=True, exist_ok=True)
    sched = {"policy": policy, "mode": mode, "preemption": policy != "fcfs",
             "aging_tokens_per_s": metrics.pop("aging", 0.0), "promote_after_s": metrics.pop("promote", None)}
    (d / "metrics.json").write_text(json.dumps({**metrics, "variant": sched}))
    (d / "variant.json").write_text(json.dumps({"name": name, **sched}))


def _png_ok(p: Path) -> None:
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5_000


# ---------------------------------------------------------------------- (a)
def _train_metrics(path: Path) -> Path:
    step = lambda mae, r2: {"n": 10, "mae": mae, "rmse": mae * 1.5, "r2": r2, "kendall_tau": 0.5}  # noqa: E731
    m = {
        "predictor": "minilm", "data": "alpaca_eval", "subset": {"generators": ["g1", "g2"], "rows": {"test": 30}},
        "eval": {"test": {"overall": {"n": 30, "mae": 40.0, "rmse": 60.0, "r2": 0.7, "kendall_tau": 0.6},
                          "kendall_tau_step0": 0.55,
                          "per_step": {"groups": {"0": step(50.0, 0.6), "1": step(40.0, 0.7), "2": step(30.0, 0.8)},
                                       "num_r2_undefined": 0}}},
        "baselines": {"test": {"mean": {"overall": {"n": 30, "mae": 70.0, "r2": 0.0}, "kendall_tau_step0": float("nan"),
                                        "per_step_mae": {"0": 80.0, "1": 70.0, "2": 60.0}}}},
    }
    path.write_text(json.dumps(m))
    return path


def test_predictor_figure_table_and_png(tmp_path):
    md = figures.predictor_figure(_train_metrics(tmp_path / "metrics.json"), tmp_path / "a.png", tmp_path / "a.md")
    _png_ok(tmp_path / "a.png")
    assert (tmp_path / "a.md").read_text() == md
    assert "| R² over all steps | 0.852 | 0.700 |" in md
    assert "| MAE step 0 (tokens) | ~60 | 50.0 |" in md
    assert "| MAE step 2 (tokens) | ~20 | 30.0 |" in md  # the last evaluated step
    assert "| Kendall τ at step 0 | n/a | 0.550 |" in md
    assert "| R² of baseline mean | n/a | 0.000 |" in md


def test_predictor_metrics_missing_split_lists_available(tmp_path):
    with pytest.raises(KeyError, match=r"split='test_ood'.*\['test'\]"):
        figures.load_predictor_metrics(_train_metrics(tmp_path / "m.json"), "test_ood")


# ---------------------------------------------------------------------- (b)
def _sweep(root: Path, rates: dict[str, tuple[float, float, float, float]]) -> Path:
    """rates: {rate: (fcfs jct, isrtf jct, fcfs queuing, isrtf queuing)}; oracle = 0.5 × FCFS JCT."""
    for r, (fj, ij, fq, iq) in rates.items():
        v = root / "rates" / r / "variants"
        _variant(v / "fcfs_windowed", "fcfs_windowed", "fcfs", "windowed", jct_mean_s=fj, queuing_delay_mean_s=fq,
                 request_throughput_rps=float(r))
        _variant(v / "isrtf_windowed", "isrtf_windowed", "isrtf", "windowed", jct_mean_s=ij, queuing_delay_mean_s=iq)
        _variant(v / "srtf_oracle_windowed", "srtf_oracle_windowed", "srtf_oracle", "windowed",
                 jct_mean_s=fj / 2, queuing_delay_mean_s=fq / 2)
    return root


def test_jct_table_hand_computed_changes(tmp_path):
    root = _sweep(tmp_path / "b", {"0.2": (10.0, 8.0, 4.0, 3.0), "0.4": (20.0, 15.0, 10.0, 5.0)})
    md = figures.jct_figure(root, tmp_path / "b.png")
    _png_ok(tmp_path / "b.png")
    # (8 - 10) / 10 = -20.0 %, (3 - 4) / 4 = -25.0 %; (15 - 20) / 20 = -25.0 %, (5 - 10) / 10 = -50.0 %
    assert "| 0.2 | 0.200 | 10.00 | 8.00 | -20.0% | 4.00 | 3.00 | -25.0% | -50.0% | n/a |" in md
    assert "| 0.4 | 0.400 | 20.00 | 15.00 | -25.0% | 10.00 | 5.00 | -50.0% | -50.0% | n/a |" in md
    assert "| paper (ELIS) | | | | -19.6% | | | -16.75% | | |" in md
    assert "predictor `unknown`" in md  # no config.yaml in the hand-built folder


def test_jct_figure_with_trace_run_and_missing_isrtf(tmp_path):
    g = _sweep(tmp_path / "g", {"0.3": (10.0, 9.0, 2.0, 1.0)})
    t = _sweep(tmp_path / "t", {"0.05": (12.0, 6.0, 2.0, 1.0)})
    md = figures.jct_figure(g, tmp_path / "b.png", trace_dir=t)
    assert "| time_scale |" in md and "| 0.05 | 0.050 | 12.00 | 6.00 | -50.0% |" in md
    (t / "rates" / "0.05" / "variants" / "isrtf_windowed" / "metrics.json").unlink()
    with pytest.raises(ValueError, match="time_scale=0.05: need variants fcfs/windowed and isrtf/windowed"):
        figures.jct_figure(g, tmp_path / "b2.png", trace_dir=t)


# ---------------------------------------------------------------------- (c)
def test_scalability_table(tmp_path):
    rows = [{"num_workers": w, "policy": p, "max_rate_rps": w * k, "queuing_delay_mean_s_at_rate": 0.49,
             "predictor": "noisy_oracle"} for w in (10, 50) for p, k in (("fcfs", 0.4), ("isrtf", 0.5))]
    (tmp_path / "s.json").write_text(json.dumps({"scalability": rows}))
    md = figures.scalability_figure(tmp_path / "s.json", tmp_path / "c.png")
    _png_ok(tmp_path / "c.png")
    assert "| 10 |  | 4.00 | 5.00 | 0.400 | 0.500 |" in md
    assert "| 50 | 18.77 | 20.00 | 25.00 | 0.400 | 0.500 |" in md
    (tmp_path / "e.json").write_text(json.dumps({"scalability": []}))
    with pytest.raises(ValueError, match="no 'scalability' rows"):
        figures.scalability_figure(tmp_path / "e.json", tmp_path / "e.png")



def test_scalability_table_over_seeds_mean_and_interval(tmp_path):
    # fcfs at 10 workers over seeds 0,1,2: 3, 4, 5 req/s -> mean 4, s = 1,
    # half-width t(0.975, 2) * 1 / sqrt(3) = 4.3027 * 0.57735 = 2.484; isrtf: 5, 5, 5 -> ± 0.00
    rows = [{"num_workers": 10, "policy": "fcfs", "seed": s, "max_rate_rps": r, "predictor": "noisy_oracle"}
            for s, r in enumerate((3.0, 4.0, 5.0))]
    rows += [{"num_workers": 10, "policy": "isrtf", "seed": s, "max_rate_rps": 5.0, "predictor": "noisy_oracle"}
             for s in range(3)]
    (tmp_path / "s.json").write_text(json.dumps({"scalability": rows}))
    md = figures.scalability_figure(tmp_path / "s.json", tmp_path / "c.png")
    _png_ok(tmp_path / "c.png")
    assert "| 10 |  | 4.00 ± 2.48 | 5.00 ± 0.00 | 0.400 | 0.500 |" in md
    assert "over 3 seeds" in md


# ---------------------------------------------------------------------- (d)
def test_starvation_table_order_stale_variants_and_deltas(tmp_path):
    root = tmp_path / "d"
    v = root / "variants"
    common = {"queuing_delay_p99_s": 9.0, "num_preemptions": 3, "length_bucket_edges_tokens": [100.0, 300.0],
              "jct_p99_s_long": 50.0}
    _variant(v / "fcfs_windowed", "fcfs_windowed", "fcfs", "windowed", jct_mean_s=10.0, jct_mean_s_short=8.0,
             jct_mean_s_medium=10.0, jct_mean_s_long=12.0, max_wait_s=20.0, **common)
    _variant(v / "isrtf_aging_windowed", "isrtf_aging_windowed", "isrtf", "windowed", aging=5.0, jct_mean_s=9.0,
             jct_mean_s_short=4.0, jct_mean_s_medium=9.0, jct_mean_s_long=15.0, max_wait_s=30.0, **common)
    _variant(v / "isrtf_windowed", "isrtf_windowed", "isrtf", "windowed", jct_mean_s=8.0, jct_mean_s_short=4.0,
             jct_mean_s_medium=8.0, jct_mean_s_long=18.0, max_wait_s=60.0, **common)
    _variant(v / "stale_windowed", "stale_windowed", "sjf", "windowed", jct_mean_s=1.0, max_wait_s=1.0, **common)
    (root / "config.yaml").write_text(
        "predictor: {name: noisy_oracle}\ncompare:\n  variants:\n    - {name: fcfs_windowed}\n"
        "    - {name: isrtf_windowed}\n    - {name: isrtf_aging_windowed}\n")
    md = figures.starvation_figure(root, tmp_path / "d.png")
    _png_ok(tmp_path / "d.png")
    rows = [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| ") and "windowed" in line]
    assert rows == ["| fcfs_windowed", "| isrtf_windowed", "| isrtf_aging_windowed"]  # config order, no stale
    # isrtf: (8-10)/10 = -20 %, short (4-8)/8 = -50 %, long (18-12)/12 = +50 %
    assert "| isrtf_windowed | 0.0 | n/a | 8.00 (-20.0%) | 4.00 (-50.0%) | 8.00 (-20.0%) | 18.00 (+50.0%) | 50.0 | 60.0 |" in md
    assert "| isrtf_aging_windowed | 5.0 | n/a | 9.00 (-10.0%) |" in md
    assert "edges 100 / 300 tokens" in md and "Predictor: `noisy_oracle`." in md


def test_paper_d_preset_end_to_end_on_tiny_data(tmp_path, compose_cfg):
    """The real preset (7 variants incl. aging/promotion) runs and feeds the (d) table."""
    from elis.experiments.run import run

    write_tiny_dataset(tmp_path / "data")
    cfg = compose_cfg("run_experiment", ["preset=paper_d", "data.name=tiny", "num_requests=24",
                                         "max_tokens=200", "workload.rate_rps=5.0", "plots=false"])
    assert cfg.cost_model.name == "a100_llama2_13b" and cfg.workload.cv == pytest.approx(1.072)
    run(cfg)
    t = figures.starvation_table(cfg.paths.output_dir)
    assert t["name"].tolist() == [v["name"] for v in cfg.compare.variants]
    assert t.loc[t["name"] == "isrtf_aging20_windowed", "aging_tokens_per_s"].item() == 20.0
    assert t.loc[t["name"] == "isrtf_promote60_windowed", "promote_after_s"].item() == 60.0
    assert (t["max_wait_s"] >= 0).all()


def test_cli_prints_table(tmp_path, capsys):
    assert figures.main(["a", str(_train_metrics(tmp_path / "m.json")), "--png", str(tmp_path / "a.png")]) == 0
    assert "R² over all steps" in capsys.readouterr().out
