"""Load generator: request bodies, SSE accounting, run order, spread, and end-to-end runs
against the instant OpenAI-compatible backend on loopback (elis.experiments.instant_backend)."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from serving_factories import write_tiny_dataset  # noqa: E402

from elis.experiments import loadgen as lg  # noqa: E402
from elis.experiments.instant_backend import make_app, serve_in_thread  # noqa: E402


@pytest.fixture(scope="module")
def fake_url():
    with serve_in_thread(make_app()) as url:
        yield url


def _req(i: int, prompt: str, arrival: float = 0.0) -> lg.LoadRequest:
    return lg.LoadRequest(request_id=f"r{i}", arrival_time_s=arrival, prompt=prompt, num_prompt_tokens=4,
                          reference_num_output_tokens=10, generator="gen", seed=i)


# ---------------------------------------------------------------------- pure parts
def test_request_body_chat_and_completions():
    opts = lg.ReplayOptions(api="chat", max_tokens=5, sampling={"temperature": 0.7, "top_p": None},
                            stop=["\n\n"])
    assert lg.request_body("chat", "m", _req(3, "hi"), opts) == {
        "model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.7, "seed": 3, "stop": ["\n\n"], "stream_options": {"include_usage": True}}
    opts = lg.ReplayOptions(api="completions", max_tokens=2, include_usage=False)
    assert lg.request_body("completions", "m", _req(0, "hi"), opts) == {
        "model": "m", "max_tokens": 2, "stream": True, "prompt": "hi", "seed": 0}


def test_stream_accounting_by_hand():
    # arrival 1.0; text chunks at 2.0, 2.5, 4.0; finish chunk at 4.25; usage says 3 tokens
    s = lg._Stream("completions")
    feed = [(2.0, {"choices": [{"text": "a", "finish_reason": None}]}),
            (2.5, {"choices": [{"text": "b", "finish_reason": None}]}),
            (4.0, {"choices": [{"text": "c", "finish_reason": None}]}),
            (4.25, {"choices": [{"text": "", "finish_reason": "stop"}]}),
            (4.5, {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}})]
    for t, obj in feed:
        assert s.feed("data: " + json.dumps(obj), t) is False
    assert s.feed(": keep-alive comment", 4.6) is False
    assert s.feed("data: [DONE]", 4.6) is True
    row = lg._finish_row(lg._row(_req(0, "p"), 1.0, lg.ReplayOptions()), s, s.finish_s)
    assert row["status"] == "FINISHED" and row["finish_reason"] == "stop" and row["output_text"] == "abc"
    assert row["ttft_s"] == 1.0 and row["jct_s"] == 3.25 and row["finish_time_s"] == 4.25
    assert row["tpot_s"] == pytest.approx((4.25 - 2.0) / 2)
    assert row["max_wait_s"] == 1.5  # gaps: 1.0, 0.5, 1.5, 0.25
    assert row["num_output_tokens"] == 3 and row["num_output_tokens_source"] == "usage"
    assert row["num_prompt_tokens"] == 9  # the server's count replaces the dataset's


def test_stream_error_chunk_and_bad_json():
    s = lg._Stream("chat")
    assert s.feed('data: {"error": {"message": "boom"}}', 0.0) is True and "boom" in s.error
    s = lg._Stream("chat")
    assert s.feed("data: {not json", 0.0) is True and "unparsable" in s.error


def test_run_order_interleavings():
    assert lg.run_order(["A", "B"], 3, "abba") == [(0, "A"), (0, "B"), (1, "B"), (1, "A"), (2, "A"), (2, "B")]
    assert lg.run_order(["A", "B"], 2, "abab") == [(0, "A"), (0, "B"), (1, "A"), (1, "B")]
    assert lg.run_order(["A", "B"], 2, "blocked") == [(0, "A"), (1, "A"), (0, "B"), (1, "B")]
    with pytest.raises(ValueError, match=r"order='zigzag'.*abba"):
        lg.run_order(["A"], 1, "zigzag")
    with pytest.raises(ValueError, match="repetitions"):
        lg.run_order(["A"], 0)
    with pytest.raises(ValueError, match="duplicate"):
        lg.run_order(["A", "A"], 1)


def test_mean_interval_by_hand():
    # mean 2, sd 1, n 3: half-width = t(0.975, 2) * 1 / sqrt(3) = 4.302653 / 1.7320508 = 2.484138
    m, lo, hi = lg.mean_interval([1.0, 2.0, 3.0])
    assert m == 2.0 and lo == pytest.approx(2 - 2.484138, abs=1e-5) and hi == pytest.approx(2 + 2.484138, abs=1e-5)
    assert lg.mean_interval([5.0, None, float("nan")]) == (5.0, 5.0, 5.0)
    assert all(math.isnan(v) for v in lg.mean_interval([None]))


def test_spread_paired_difference_by_hand():
    per_rep = {"fcfs": [{"jct_mean_s": 1.0}, {"jct_mean_s": 2.0}, {"jct_mean_s": 3.0}],
               "isrtf": [{"jct_mean_s": 2.0}, {"jct_mean_s": 3.0}, {"jct_mean_s": 4.5}],
               "same": [{"jct_mean_s": 1.5}, {"jct_mean_s": 1.5}, {"jct_mean_s": 3.0}]}
    df = lg.spread_frame(per_rep, metrics=("jct_mean_s",)).set_index("variant")
    # isrtf - fcfs = [1, 1, 1.5]: mean 7/6, sd 0.288675, half 4.302653 * 0.288675 / 1.7320508 = 0.717109
    r = df.loc["isrtf"]
    assert r["diff_mean"] == pytest.approx(7 / 6) and r["diff_ci95_low"] == pytest.approx(7 / 6 - 0.717109, abs=1e-5)
    assert r["inside_spread"] is False or r["inside_spread"] == False  # noqa: E712
    # same - fcfs = [0.5, -0.5, 0]: interval around 0 → not a result
    assert df.loc["same", "inside_spread"] == True  # noqa: E712
    md = lg.spread_markdown(df.reset_index())
    assert "yes: not a result" in md and "(base)" in md


def test_bad_config_values_name_the_field():
    with pytest.raises(ValueError, match=r"api='grpc'.*chat"):
        lg.ReplayOptions(api="grpc")
    with pytest.raises(ValueError, match="max_tokens"):
        lg.ReplayOptions(max_tokens=0)
    with pytest.raises(ValueError, match="time_scale"):
        lg.ReplayOptions(time_scale=float("inf"))
    with pytest.raises(ValueError, match=r"endpoints\[0\].*needs name and base_url"):
        lg.parse_endpoints([{"name": "a"}])
    with pytest.raises(ValueError, match=r"endpoints\[0\].base_url='localhost:1'"):
        lg.parse_endpoints([{"name": "a", "base_url": "localhost:1"}])
    with pytest.raises(ValueError, match="endpoints is empty"):
        lg.parse_endpoints([])


# ---------------------------------------------------------------------- against the fake server
def test_replay_counts_tokens_and_fails_bad_requests_alone(fake_url):
    reqs = [_req(0, "abcdef"), _req(1, "FAIL400 x"), _req(2, "CUT here"), _req(3, "ERRCHUNK"),
            _req(4, "a" * 40, arrival=0.05)]
    opts = lg.ReplayOptions(api="chat", max_tokens=30)
    df, info = asyncio.run(lg.replay(lg.Endpoint("f", fake_url), reqs, opts, scrape_metrics=True))
    df = df.set_index("request_id")
    assert info["model"] == "instant"
    assert df.loc["r0", "status"] == "FINISHED" and df.loc["r0", "num_output_tokens"] == 6
    assert df.loc["r0", "output_text"] == "t0 t1 t2 t3 t4 t5 " and df.loc["r0", "finish_reason"] == "stop"
    assert df.loc["r4", "num_output_tokens"] == 30 and df.loc["r4", "finish_reason"] == "length"
    assert df.loc["r4", "arrival_time_s"] == 0.05 and df.loc["r4", "send_time_s"] >= 0.05
    assert df.loc["r1", "status"] == "FAILED" and df.loc["r1", "fail_reason"].startswith("HTTP 400")
    assert "prompt" in df.loc["r1", "fail_reason"]
    assert df.loc["r2", "fail_reason"] == "stream ended without a finish_reason"
    assert "engine failed" in df.loc["r3", "fail_reason"]
    assert info["server_metrics_delta"]["instant_requests_total"] == 5.0
    assert df.loc["r0", "num_prompt_tokens"] == 1  # the server's usage count (1 word) replaces the dataset's 4
    m = lg.summarize_replay(df.reset_index())
    assert (m["num_finished"], m["num_failed"], m["num_output_tokens_from_usage"]) == (2, 3, 2)
    assert m["num_preemptions"] is None and m["jct_mean_s"] > 0


def test_replay_records_returned_token_ids(fake_url):
    opts = lg.ReplayOptions(api="completions", max_tokens=3, return_token_ids=True)
    assert lg.request_body("completions", "m", _req(0, "x"), opts)["return_token_ids"] is True
    df, _ = asyncio.run(lg.replay(lg.Endpoint("f", fake_url), [_req(0, "abcdef")], opts))
    assert list(df.loc[0, "output_token_ids"]) == [100, 101, 102] and df.loc[0, "prompt"] == "abcdef"


def test_replay_without_usage_counts_chunks(fake_url):
    opts = lg.ReplayOptions(api="completions", max_tokens=4, include_usage=False)
    df, _ = asyncio.run(lg.replay(lg.Endpoint("f", fake_url, model="any"), [_req(0, "xyz")], opts))
    assert df.loc[0, "num_output_tokens"] == 3 and df.loc[0, "num_output_tokens_source"] == "chunks"
    assert df.loc[0, "num_prompt_tokens"] == 4  # no usage: the dataset's count stays


def test_replay_is_bounded_by_timeouts(fake_url):
    reqs = [_req(0, "SLOW " * 4), _req(1, "late", arrival=50.0), _req(2, "ok")]
    opts = lg.ReplayOptions(max_tokens=20, request_timeout_s=0.3, max_duration_s=5.0)
    df, info = asyncio.run(lg.replay(lg.Endpoint("f", fake_url), reqs, opts))
    df = df.set_index("request_id")
    assert df.loc["r0", "fail_reason"] == "timed out: request_timeout_s=0.3 reached in flight"
    assert df.loc["r1", "fail_reason"] == "not sent: max_duration_s=5 reached before its arrival"
    assert df.loc["r2", "status"] == "FINISHED"
    assert info["wall_s"] < 5.0  # the not-sent request is not waited for (bounded run)


def test_dead_endpoint_fails_fast():
    with pytest.raises(ValueError, match=r"endpoints\[dead\].base_url='http://127.0.0.1:9/v1' is not reachable"):
        asyncio.run(lg.replay(lg.Endpoint("dead", "http://127.0.0.1:9/v1"), [_req(0, "x")], lg.ReplayOptions()))


def test_run_writes_run_experiment_layout(tmp_path, compose_cfg, fake_url):
    write_tiny_dataset(tmp_path / "data")
    eps = f'[{{name: fcfs, base_url: "{fake_url}", policy: fcfs}},{{name: isrtf, base_url: "{fake_url}", policy: isrtf}}]'
    cfg = compose_cfg("loadgen", ["data.name=tiny", "num_requests=6", "max_tokens=12", "workload.rate_rps=50",
                                  f"endpoints={eps}", "repetitions=2", "order=abba"])
    out = lg.run(cfg)
    d = Path(out["output_dir"])
    for name in ("fcfs", "isrtf"):
        rec = pd.read_parquet(d / "variants" / name / "requests.parquet")
        assert len(rec) == 12 and (rec["status"] == "FINISHED").all()
        assert sorted(rec["repetition"].unique()) == [0, 1]
        # tiny prompts are 'Question number i?' (18 chars) → min(12, 18) = 12 tokens, 'length'
        assert (rec["num_output_tokens"] == 12).all() and (rec["finish_reason"] == "length").all()
        m = json.loads((d / "variants" / name / "metrics.json").read_text())
        assert m["num_finished"] == 12 and m["num_repetitions"] == 2
        for k in ("jct_mean_s", "jct_p99_s", "ttft_mean_s", "tpot_mean_s", "request_throughput_rps"):
            assert m[k] is not None and len(m["repetitions"].get(k, [0, 0])) == 2
        rep = json.loads((d / "variants" / name / "reps" / "1" / "metrics.json").read_text())
        assert rep["num_requests"] == 6 and rep["server_metrics_delta"]["instant_requests_total"] == 6.0
    wl = pd.read_parquet(d / "workload.parquet")
    rec = pd.read_parquet(d / "variants" / "fcfs" / "reps" / "0" / "requests.parquet")
    assert rec["arrival_time_s"].tolist() == pytest.approx(wl["arrival_time_s"].tolist())
    assert "fcfs" in (d / "comparison.md").read_text()
    spread = pd.read_csv(d / "spread.csv")
    assert set(spread["variant"]) == {"fcfs", "isrtf"} and (spread["num_repetitions"] == 2).all()
    assert (d / "spread.md").exists() and (d / "config.yaml").exists()


def test_trace_without_text_is_refused(tmp_path, compose_cfg):
    csv = tmp_path / "trace.csv"
    csv.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.0000000,10,5\n"
                   "2023-11-16 18:15:47.0000000,10,5\n")
    cfg = compose_cfg("loadgen", ["workload=azure_code", f"workload.path={csv}", "workload.use_trace_lengths=true",
                                  "num_requests=2"])
    with pytest.raises(ValueError, match="use_trace_lengths=true"):
        lg.build_requests(cfg)


def test_server_count_reads_gateway_counters():
    delta = {"elis:num_preemptions_total": 3.0, "elis:num_preemptions_created": 0.0,
             "vllm:num_preemptions_total{model_name=m}": 2.0, "fake_requests_total": 9.0}
    assert lg.server_count(delta, "num_preemptions_total") == 5
    assert lg.server_count({"fake_requests_total": 1.0}, "num_preemptions_total") is None
    assert lg.server_count(None, "num_preemptions_total") is None


def test_server_mean_of_a_histogram():
    delta = {"elis:request_queue_time_seconds_sum": 3.0, "elis:request_queue_time_seconds_count": 4.0,
             "elis:request_queue_time_seconds_bucket{le=1.0}": 4.0}
    assert lg.server_mean(delta, "request_queue_time_seconds") == 0.75
    assert lg.server_mean({"elis:request_queue_time_seconds_count": 0.0}, "request_queue_time_seconds") is None
