"""cluster=ray: two SmolLM2 worker actors on a local Ray; one is killed mid-window.

Slow (Ray start-up, two model loads): run with `pytest -m slow tests/backends/test_ray_cluster.py`.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "Name three colours.", "Say hello.",
           "Why is the sky blue?", "Count to five.", "What is 2+2?"]


def test_killed_actor_requests_finish_on_the_other_actor(compose_cfg, tmp_path):
    pytest.importorskip("ray")
    import ray
    from hydra.utils import instantiate

    from elis.config import PROJECT_ROOT
    from elis.serving import wallclock
    from elis.serving.simulator import RequestTable
    from elis.serving.workers.hf import HFWindowEngine, WindowItem, encode_prompt, load_causal_lm

    cfg = compose_cfg("run_experiment", [
        "worker=hf", "cluster=ray", "num_workers=2", "load_balancer=round_robin", "sched=fcfs",
        "window_tokens=10", "max_batch_size=2", "max_tokens=30", "worker.sampling.temperature=0.0",
        f"worker.cache_dir={PROJECT_ROOT / 'cache'}", "+cluster.kill_worker={worker_id: 1, after_windows: 2}",
    ])
    table = RequestTable(arrival_time_s=np.zeros(6), num_prompt_tokens=np.full(6, 10),
                         num_output_tokens=np.full(6, 30), max_tokens=30, prompts=PROMPTS)
    sched = {"policy": "fcfs", "mode": "windowed", "preemption": False}
    try:
        m = wallclock.run_variant(cfg, sched, table, None, instantiate(cfg.cost_model), tmp_path / "v")
    finally:
        from elis.serving.runtime import _HANDLES

        _HANDLES.clear()
        ray.shutdown()
    assert m["num_finished"] == 6 and m["num_failed"] == 0
    assert m["num_worker_faults"] == 1 and m["faults"][0]["worker_id"] == 1
    assert m["faults"][0]["num_requeued"] >= 1
    import pandas as pd

    df = pd.read_parquet(tmp_path / "v" / "requests.parquet").set_index("request_id")
    moved = m["faults"][0]["requeued_request_ids"]
    assert (df.loc[moved, "worker_id"] == 0).all()
    # greedy: every answer (resumed or not) has the uninterrupted length
    model, tok = load_causal_lm(cache_dir=PROJECT_ROOT / "cache")
    eng = HFWindowEngine(model, tok)
    for i, p in enumerate(PROMPTS):
        ref = eng.run_window([WindowItem("r", encode_prompt(tok, p), (), 30, max_tokens=30)])[0]
        expected = len(ref.new_token_ids) - (ref.finish_reason == "eos")  # workers report no EOS
        assert df.loc[f"req-{i:07d}", "num_output_tokens"] == expected
