"""``elis.serving.bench.scalability`` over seeds: one row per (workers, policy, seed), reproducible."""

from __future__ import annotations

import pytest

from elis.serving import bench


@pytest.mark.parametrize("seeds", [[], [1, 1]])
def test_scalability_rejects_empty_or_duplicated_seeds(seeds):
    with pytest.raises(ValueError, match=r"seeds must be a non-empty list of distinct integers, got \["):
        bench.scalability([1], "h100_llama2_13b", seeds=seeds)


def test_scalability_one_row_per_seed_and_same_seed_same_rate(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "PROJECT_ROOT", tmp_path)  # no data/alpaca_eval: log-normal lengths
    kw = dict(policies=["fcfs"], requests_per_worker=10, iterations=1)
    rows = bench.scalability([1], "h100_llama2_13b", seeds=[0, 1], **kw)
    assert [(r["num_workers"], r["policy"], r["seed"]) for r in rows] == [(1, "fcfs", 0), (1, "fcfs", 1)]
    again = bench.scalability([1], "h100_llama2_13b", seeds=[1], **kw)
    assert again[0]["max_rate_rps"] == rows[1]["max_rate_rps"]
    assert all(r["queuing_delay_mean_s_at_rate"] < 0.5 for r in rows)
