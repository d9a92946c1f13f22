"""Small factories for serving tests (vLLM-style): requests, schedulers, tiny datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from elis.serving.cost_model import CostModel
from elis.serving.load_balancer import RoundRobin
from elis.serving.policy import SchedulingPolicy
from elis.serving.scheduler import Scheduler
from elis.serving.simulator import RequestTable, Simulator

UNIT_STEP = CostModel(name="unit", decode_base_s=1.0)  # every decode step takes exactly 1 s


def make_table(num_output_tokens, arrival_times=None, *, num_prompt_tokens=5, max_tokens=10_000, ids=None):
    n = len(num_output_tokens)
    arrivals = np.zeros(n) if arrival_times is None else np.asarray(arrival_times, dtype=float)
    prompts = np.full(n, num_prompt_tokens) if np.isscalar(num_prompt_tokens) else np.asarray(num_prompt_tokens)
    return RequestTable(
        arrival_time_s=arrivals, num_prompt_tokens=prompts, num_output_tokens=np.asarray(num_output_tokens),
        max_tokens=max_tokens, request_ids=ids,
        prompts=[f"prompt {i}" for i in range(n)],
        responses=[" ".join(["tok"] * int(k)) for k in num_output_tokens],
    )


def make_schedulers(policy="fcfs", n=1, *, prediction=None, **kw):
    kw.setdefault("max_batch_size", 1)
    kw.setdefault("window_tokens", 1)
    pol = policy if isinstance(policy, SchedulingPolicy) else SchedulingPolicy(policy)
    return [Scheduler(w, pol, predictor=prediction, **kw) for w in range(n)]


class ScriptedPredictor:
    """A ``PredictionSource`` with hand-set values: ``first[id]`` at 0 generated tokens,
    ``later[id]`` afterwards; charges ``latency_s`` per call (hand-computed schedules)."""

    def __init__(self, first: dict[str, float], later: dict[str, float] | None = None, latency_s: float = 0.0):
        self.first, self.later, self.latency_s = first, later or first, latency_s
        self.calls: list[list[tuple[str, int]]] = []

    def predict(self, requests):
        self.calls.append([(r.request_id, r.num_generated_tokens) for r in requests])
        vals = [(self.first if r.num_generated_tokens == 0 else self.later)[r.request_id] for r in requests]
        return np.asarray(vals, dtype=np.float64), self.latency_s


def simulate(table, schedulers, cost_model=UNIT_STEP, lb=None, prediction=None, trace=False):
    sim = Simulator(table, schedulers, cost_model, lb or RoundRobin(), prediction)
    if trace:
        sim.trace = []
    res = sim.run()
    return res, sim


def write_tiny_dataset(data_dir: Path, name: str = "tiny", lengths=(3, 120, 40, 0, 1, 75, 260, 9)) -> Path:
    """A DatasetDict with schema.py's pair columns at ``data_dir/name/pairs`` (test split)."""
    import datasets

    rows = {
        "sample_id": [f"tiny/p{i}/gen" for i in range(len(lengths))],
        "prompt_id": [f"p{i}" for i in range(len(lengths))],
        "prompt": [f"Question number {i}?" for i in range(len(lengths))],
        "response": [" ".join(f"w{j}" for j in range(k)) for k in lengths],
        "generator": ["gen"] * len(lengths),
        "source": ["tiny"] * len(lengths),
        "num_prompt_tokens": [4 + i for i in range(len(lengths))],
        "num_output_tokens": list(lengths),
    }
    ds = datasets.Dataset.from_dict(rows)
    dd = datasets.DatasetDict({"train": ds, "val": ds, "test": ds})
    out = data_dir / name / "pairs"
    dd.save_to_disk(str(out))
    return out
