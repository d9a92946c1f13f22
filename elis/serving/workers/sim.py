"""Simulated worker: window times from a ``CostModel``, tokens from the TRUE response.

For each item, the tokens produced are ``n = min(max_new_tokens, true remaining)`` where the
true remaining is ``min(true length, max_tokens) − generated``; the request finishes when it
reaches that target (reason 'length' if the target equals ``max_tokens``, else 'eos').

Timing (semantics in ``elis.serving.workers.base``): prefill of all items' prefill tokens
first (``prefill_time_s(Σ)``), then decode steps; step ``j`` costs
``decode_step_time_s(b_j, ctx_j)`` with ``b_j`` the items still active and ``ctx_j`` their
total context. Windowed batches decode until every item stopped (items leave early); with
``stop_on_first`` all items decode ``min(n_i, max_steps)`` steps together.
"""

from __future__ import annotations

from collections.abc import Callable

from elis.serving.cost_model import CostModel
from elis.serving.prediction import reveal_prefix
from elis.serving.request import Request
from elis.serving.workers.base import WindowBatch, WindowResult


class SimWorker:
    """A simulated engine instance.

    Args:
        worker_id: its index.
        cost_model: the timing model.
        lookup: request_id → the ``Request`` (the simulator's table of active requests).
        reveal_text: fill ``WindowResult.new_text`` with the true response's next characters
            (``elis.serving.prediction.reveal_prefix``); off when no predictor reads text.
    """

    def __init__(
        self,
        worker_id: int,
        cost_model: CostModel,
        lookup: Callable[[str], Request],
        reveal_text: bool = False,
    ) -> None:
        self.worker_id = worker_id
        self.cost_model = cost_model
        self.lookup = lookup
        self.reveal_text = reveal_text

    def planned_tokens(self, batch: WindowBatch) -> list[int]:
        """Tokens each item would produce if not truncated by the stopping rule."""
        out = []
        for it in batch.items:
            r = self.lookup(it.request_id)
            rem = r.true_remaining_tokens
            if rem is None:
                raise ValueError(f"simulated request {it.request_id!r} has no true length")
            out.append(min(it.max_new_tokens, rem))
        return out

    def execute(self, batch: WindowBatch, start_s: float) -> list[WindowResult]:
        """Results of running ``batch`` from ``start_s`` (see module docstring)."""
        cm = self.cost_model
        n_plan = self.planned_tokens(batch)
        t0 = start_s + cm.prefill_time_s(batch.num_prefill_tokens)
        items = batch.items
        if batch.stop_on_first:
            steps = min(n_plan) if n_plan else 0
            if batch.max_steps is not None:
                steps = min(steps, batch.max_steps)
            n_tok = [steps] * len(items)
            ctx = sum(it.num_context_tokens for it in items)
            end = t0 + cm.decode_time_s(len(items), ctx, steps)
            first = t0 + cm.decode_step_time_s(len(items), ctx) if steps else None
            ends = [end] * len(items)
            firsts = [first] * len(items)
        else:
            n_tok = n_plan
            ends, firsts = self._windowed_times(batch, n_tok, t0)
        results = []
        for it, n, end, first in zip(items, n_tok, ends, firsts):
            r = self.lookup(it.request_id)
            g1 = r.num_generated_tokens + n
            finished = g1 >= r.target_num_output_tokens  # type: ignore[operator]
            reason = None
            if finished:
                reason = "length" if g1 >= r.max_tokens else "eos"
            text = ""
            if self.reveal_text and n:
                total = r.true_num_output_tokens or 0
                text = reveal_prefix(r.true_response or "", g1, total)[
                    len(reveal_prefix(r.true_response or "", r.num_generated_tokens, total)):
                ]
            results.append(
                WindowResult(
                    request_id=it.request_id,
                    num_new_tokens=n,
                    new_text=text,
                    finished=finished,
                    finish_reason=reason,
                    start_s=start_s,
                    end_s=end,
                    first_token_time_s=first if n else None,
                )
            )
        return results

    def _windowed_times(self, batch: WindowBatch, n_tok: list[int], t0: float) -> tuple[list[float], list]:
        """Per-item stop time and first-token time when items leave the batch as they finish."""
        cm = self.cost_model
        items = batch.items
        order = sorted(range(len(items)), key=lambda i: n_tok[i])
        active = [i for i in order if n_tok[i] > 0]
        ends = [t0] * len(items)
        firsts: list[float | None] = [None] * len(items)
        b = len(active)
        ctx = sum(items[i].num_context_tokens for i in active)  # context at step 0
        if b:
            first = t0 + cm.decode_step_time_s(b, ctx)
            for i in active:
                firsts[i] = first
        t, done_steps, k = t0, 0, 0
        while k < len(active):
            target = n_tok[active[k]]
            ctx_now = ctx + done_steps * b
            t += cm.decode_time_s(b, ctx_now, target - done_steps)
            done_steps = target
            while k < len(active) and n_tok[active[k]] == target:
                i = active[k]
                ends[i] = t
                ctx -= items[i].num_context_tokens
                b -= 1
                k += 1
        return ends, firsts
