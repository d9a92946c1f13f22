"""The comparison report re-reads run directories: hand-computed changes and oracle share."""

from __future__ import annotations

import json

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
