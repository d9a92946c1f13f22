"""Simulated worker: window times from a ``CostModel``, tokens from the TRUE response.

Tokens and steps (the same as the real workers, ``elis.serving.metrics``): a request's
target is ``min(true length, max_tokens)`` content tokens. If the true length is below
``max_tokens`` the request ends by EOS, which costs ONE more decode step after its last
content token (the engine must choose EOS; the token itself is not an output token); it then
finishes 'eos'. Otherwise it finishes 'length' with its ``max_tokens``-th token (no EOS step).
In a window of budget ``m`` (``max_new_tokens``) with ``rem`` content tokens left, an 'eos'
request produces ``rem`` tokens in ``rem + 1`` steps and finishes if ``rem + 1 <= m``, else
``m`` tokens in ``m`` steps (so an answer of exactly ``k·W`` tokens spends one step of the
next window on EOS, as the HF engine does); a 'length' request produces ``min(m, rem)``.

Timing (semantics in ``elis.serving.workers.base``): prefill of all items' prefill tokens
first (``prefill_time_s(Σ)``), then decode steps; step ``j`` costs
``decode_step_time_s(b_j, ctx_j)`` with ``b_j`` the items still active and ``ctx_j`` their
total context. Windowed batches decode until every item stopped (items leave after their
own last step); with ``stop_on_first`` all items decode ``min(steps_i, max_steps)`` steps
together. An item's first token time is the end of its first step if it produces a content
token in the window, else None (an EOS-only window).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from elis.serving.cost_model import CostModel
from elis.serving.prediction import reveal_prefix
from elis.serving.request import Request
from elis.serving.workers.base import WindowBatch, WindowResult


@dataclass(slots=True, frozen=True)
class ItemPlan:
    """What one item does in a window if nothing cuts it: content tokens, decode steps, finish."""

    num_tokens: int
    num_steps: int
    finishes: bool


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

    def plan(self, batch: WindowBatch) -> list[ItemPlan]:
        """Each item's tokens, steps and finish if not truncated by the stopping rule (module docstring)."""
        out = []
        for it in batch.items:
            r = self.lookup(it.request_id)
            rem = r.true_remaining_tokens
            if rem is None:
                raise ValueError(f"simulated request {it.request_id!r} has no true length")
            m = it.max_new_tokens
            if r.target_num_output_tokens < r.max_tokens:  # type: ignore[operator]  # ends by EOS
                out.append(ItemPlan(rem, rem + 1, True) if rem + 1 <= m else ItemPlan(m, m, False))
            else:
                n = min(m, rem)
                out.append(ItemPlan(n, n, n == rem))
        return out

    def segment_steps(self, batch: WindowBatch) -> int:
        """Decode steps of a ``stop_on_first`` batch: the smallest plan, capped by ``max_steps``."""
        steps = min((p.num_steps for p in self.plan(batch)), default=0)
        return steps if batch.max_steps is None else min(steps, batch.max_steps)

    def execute(self, batch: WindowBatch, start_s: float) -> list[WindowResult]:
        """Results of running ``batch`` from ``start_s`` (see module docstring)."""
        cm = self.cost_model
        plans = self.plan(batch)
        t0 = start_s + cm.prefill_time_s(batch.num_prefill_tokens)
        items = batch.items
        if batch.stop_on_first:
            steps = self.segment_steps(batch)
            n_tok = [min(steps, p.num_tokens) for p in plans]
            done = [p.finishes and steps >= p.num_steps for p in plans]
            ctx = sum(it.num_context_tokens for it in items)
            end = t0 + cm.decode_time_s(len(items), ctx, steps)
            first = t0 + cm.decode_step_time_s(len(items), ctx) if steps else None
            ends = [end] * len(items)
            firsts = [first] * len(items)
        else:
            n_tok = [p.num_tokens for p in plans]
            done = [p.finishes for p in plans]
            ends, firsts = self._windowed_times(batch, [p.num_steps for p in plans], t0)
        results = []
        for it, n, fin, end, first in zip(items, n_tok, done, ends, firsts):
            r = self.lookup(it.request_id)
            g1 = r.num_generated_tokens + n
            reason = ("length" if g1 >= r.max_tokens else "eos") if fin else None
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
                    finished=fin,
                    finish_reason=reason,
                    start_s=start_s,
                    end_s=end,
                    first_token_time_s=first if n else None,
                )
            )
        return results

    def _windowed_times(self, batch: WindowBatch, n_tok: list[int], t0: float) -> tuple[list[float], list]:
        """Per-item stop time and first-step time when items leave the batch after ``n_tok`` steps."""
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
