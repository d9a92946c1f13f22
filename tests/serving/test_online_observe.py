"""The scheduler tells a learning predictor every answer that finished on its own (predictor=gbdt)."""

from __future__ import annotations

import numpy as np
from serving_factories import make_schedulers, make_table, simulate

from elis.predictor.simple import OraclePredictor
from elis.serving.prediction import PredictionService


class RecordingOracle(OraclePredictor):
    """The oracle, plus the online-update hook of ``GbdtPredictor.observe_finished``."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str | None, int]] = []

    def observe_finished(self, prompt: str, generator: str | None, num_output_tokens: int) -> None:
        self.seen.append((generator, num_output_tokens))


def test_finished_answers_reach_observe_finished_but_length_cuts_do_not():
    # 3 requests of 30 / 70 / 120 tokens; max_tokens=100 cuts the third ('length'): not observed.
    pred = RecordingOracle()
    service = PredictionService(pred, latency_source="zero", window_tokens=50)
    table = make_table([30, 70, 120], np.zeros(3), max_tokens=100)
    res, _ = simulate(table, make_schedulers("isrtf", prediction=service, window_tokens=50), prediction=service)
    reasons = sorted(res.records["finish_reason"])
    assert reasons.count("length") == 1
    assert sorted(n for _, n in pred.seen) == [30, 70]
