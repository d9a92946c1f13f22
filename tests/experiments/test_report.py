"""The comparison report re-reads run directories: hand-computed changes and oracle share."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from elis.experiments.report import comparison_frame, load_variants, oracle_gain_share, write_comparison


def _variant(root, name, policy, mode, jct):
    d = root / "variants" / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"jct_mean_s": jct, "jct_p99_s": 2 * jct, "num_preemptions": 1}))
    (d / "variant.json").write_text(json.dumps({"name": name, "policy": policy, "mode": mode}))


def test_changes_and_oracle_share(tmp_path):
    _variant(tmp_path, "fcfs_windowed", "fcfs", "windowed", 10.0)
    _variant(tmp_path, "isrtf_windowed", "isrtf", "windowed", 7.0)
    _variant(tmp_path, "srtf_oracle_windowed", "srtf_oracle", "windowed", 6.0)
    _variant(tmp_path, "fcfs_continuous", "fcfs", "continuous", 8.0)
    df = load_variants(tmp_path)
    comp = comparison_frame(df).set_index("name")
    assert comp.loc["isrtf_windowed", "jct_mean_s_vs_fcfs_windowed_pct"] == pytest.approx(-30.0)
    assert comp.loc["isrtf_windowed", "jct_mean_s_vs_fcfs_continuous_pct"] == pytest.approx(-12.5)
    assert oracle_gain_share(df, "windowed") == pytest.approx(0.75)
    assert oracle_gain_share(df, "continuous") is None  # no isrtf/oracle continuous runs
    md, csv = write_comparison(tmp_path)
    text = md.read_text()
    assert "7.000 (-30.0% / -12.5%)" in text and "(windowed): 75.0%" in text and "(continuous): n/a" in text
    assert csv.exists()


def test_missing_runs_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        load_variants(tmp_path)


def test_share_of_oracle_gain_per_variant_same_mode(tmp_path):
    _variant(tmp_path, "fcfs_windowed", "fcfs", "windowed", 10.0)
    _variant(tmp_path, "las_windowed", "las", "windowed", 11.0)
    _variant(tmp_path, "isrtf_windowed", "isrtf", "windowed", 7.0)
    _variant(tmp_path, "srtf_oracle_windowed", "srtf_oracle", "windowed", 6.0)
    _variant(tmp_path, "las_continuous", "las", "continuous", 5.0)  # no continuous fcfs/oracle
    comp = comparison_frame(load_variants(tmp_path)).set_index("name")
    assert comp.loc["isrtf_windowed", "oracle_gain_share"] == pytest.approx(0.75)  # 1 − (7−6)/(10−6)
    assert comp.loc["las_windowed", "oracle_gain_share"] == pytest.approx(-0.25)  # worse than FCFS
    assert comp.loc["srtf_oracle_windowed", "oracle_gain_share"] == pytest.approx(1.0)
    assert pd.isna(comp.loc["las_continuous", "oracle_gain_share"])
    assert "-25.0%" in write_comparison(tmp_path)[0].read_text()


def test_tail_tradeoff_picks_the_best_target_meeting_setting(tmp_path):
    from elis.experiments.tradeoff import best_setting, tradeoff_frame

    def v(name, policy, jct, p99, aging=0.0, promote=None):
        d = tmp_path / "variants" / name
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"jct_mean_s": jct, "jct_p99_s": p99}))
        (d / "variant.json").write_text(json.dumps({"name": name, "policy": policy, "mode": "windowed",
                                                    "aging_tokens_per_s": aging, "promote_after_s": promote}))

    v("fcfs_windowed", "fcfs", 10.0, 50.0)
    v("isrtf_windowed", "isrtf", 6.0, 80.0)
    v("isrtf_aging_1", "isrtf", 6.4, 55.0, aging=1.0)  # keeps 90% of the gain, p99 too high
    v("isrtf_aging_5", "isrtf", 6.8, 49.0, aging=5.0)  # 80% of the gain, p99 below FCFS: meets
    v("isrtf_aging_20", "isrtf", 8.0, 45.0, aging=20.0)  # 50%: fails
    f = tradeoff_frame(tmp_path).set_index("name")
    assert f.loc["isrtf_aging_1", "isrtf_gain_share"] == pytest.approx(0.9)
    assert list(f.index[f["meets_target"]]) == ["isrtf_aging_5"]
    assert best_setting(f.reset_index())["name"] == "isrtf_aging_5"


def test_failures_are_in_every_table_and_nothing_finished_is_an_error(tmp_path):
    # Issue 11 item 12: failed counts and reasons in comparison.md; undefined latencies print n/a.
    from elis.experiments.report import no_completion_message, summary_line

    _variant(tmp_path, "fcfs_windowed", "fcfs", "windowed", 10.0)
    d = tmp_path / "variants" / "isrtf_windowed"
    d.mkdir(parents=True)
    m = {"jct_mean_s": None, "jct_p99_s": None, "num_preemptions": 0, "num_requests": 3, "num_finished": 0,
         "num_failed": 3, "fail_reasons": {"needs N KV tokens > kv_capacity_tokens=1": 3}}
    (d / "metrics.json").write_text(json.dumps(m))
    (d / "variant.json").write_text(json.dumps({"name": "isrtf_windowed", "policy": "isrtf", "mode": "windowed"}))
    text = write_comparison(tmp_path)[0].read_text()
    assert "| failed |" in text.splitlines()[0]
    assert "| isrtf_windowed | n/a (n/a / n/a) |" in text and text.splitlines()[3].endswith("| 0 | 3 |")
    assert "- Failures in isrtf_windowed: 3 × needs N KV tokens > kv_capacity_tokens=1" in text
    assert "finished=0/3 failed=3 (3 × needs" in summary_line("isrtf_windowed", m)
    msg = no_completion_message({"fcfs_windowed": {"num_finished": 2}, "isrtf_windowed": m})
    assert msg.startswith("no request finished in variant(s) isrtf_windowed: 3 of 3 failed")
    assert no_completion_message({"fcfs_windowed": {"num_finished": 2}}) is None
