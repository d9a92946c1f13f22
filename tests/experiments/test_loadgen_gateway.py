"""The load generator against the real ELIS gateway (tiny random Llama, char tokenizer) on
loopback: FCFS vs ISRTF gateways, interleaved repetitions, counts checked against the gateway's
own Prometheus counters."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
pytest.importorskip("fastapi")
from gateway_factories import ServerThread, char_tokenizer, hf_runtime, tiny_llama  # noqa: E402
from serving_factories import write_tiny_dataset  # noqa: E402

from elis.experiments import loadgen as lg  # noqa: E402


class _Gateway:
    def __init__(self, runtime) -> None:
        from elis.serving.gateway import GatewayConfig, build_gateway

        self.gw, app = build_gateway(runtime, GatewayConfig("tiny", runtime.max_context_tokens))
        self.server = ServerThread(app)

    def __enter__(self) -> str:
        self.server.__enter__()
        return self.server.url + "/v1"

    def __exit__(self, *exc) -> None:
        self.server.__exit__(*exc)
        self.gw.loop.close()


def test_fcfs_vs_isrtf_gateways_same_tokens_counts_match_the_gateway(tmp_path, compose_cfg):
    from elis.predictor.simple import PromptLengthPredictor

    model, tok = tiny_llama(), char_tokenizer()
    write_tiny_dataset(tmp_path / "data")
    fcfs = hf_runtime(model, tok, policy="fcfs", max_batch_size=2, window_tokens=5)
    isrtf = hf_runtime(model, tok, policy="isrtf", max_batch_size=2, window_tokens=5,
                       predictor=PromptLengthPredictor(intercept=30.0, slope=0.0))
    with _Gateway(fcfs) as a, _Gateway(isrtf) as b:
        eps = f'[{{name: fcfs, base_url: "{a}", policy: fcfs}},{{name: isrtf, base_url: "{b}", policy: isrtf}}]'
        cfg = compose_cfg("loadgen", ["data.name=tiny", "num_requests=6", "max_tokens=15", "workload.rate_rps=40",
                                      f"endpoints={eps}", "repetitions=2", "api=completions",
                                      "sampling.temperature=0.0"])
        out = lg.run(cfg)
    d = Path(out["output_dir"])
    recs = {n: pd.read_parquet(d / "variants" / n / "requests.parquet") for n in ("fcfs", "isrtf")}
    for name, rec in recs.items():
        assert (rec["status"] == "FINISHED").all(), rec["fail_reason"].tolist()
        assert (rec["num_output_tokens_source"] == "usage").all()
        for rep in (0, 1):
            m = json.loads((d / "variants" / name / "reps" / str(rep) / "metrics.json").read_text())
            sel = rec[rec["repetition"] == rep]
            # the gateway's own token counter agrees with the usage records the client received
            assert lg.server_count(m["server_metrics_delta"], "generation_tokens_total") == sel["num_output_tokens"].sum()
            assert m["num_preemptions"] is not None and m["server_queuing_delay_mean_s"] is not None
    # greedy engine: the order of service changes times, never the tokens of a request
    key = ["request_id", "repetition"]
    a_, b_ = (recs[n].sort_values(key)[key + ["output_text", "num_output_tokens"]].reset_index(drop=True) for n in recs)
    pd.testing.assert_frame_equal(a_, b_)
