"""vLLM workers (GPU): ``worker=vllm`` (ISRTF windows on vLLM) and ``worker=vllm_priority``.

UNTESTED HERE: vLLM cannot be installed on this project's machines (no GPU). Written
against vLLM's documented offline API for the pinned version (extra ``[vllm]``,
``vllm==0.11.0``): ``vllm.LLM(model, enable_prefix_caching=True, scheduling_policy=...)``,
``LLM.generate(prompts, sampling_params, use_tqdm=False, priority=...)``,
``vllm.inputs.TokensPrompt(prompt_token_ids=...)``, ``vllm.SamplingParams(max_tokens,
temperature, top_p, seed, stop_token_ids, skip_special_tokens)`` and the engine loop
``LLMEngine.add_request(request_id, prompt, params, arrival_time=..., priority=...)`` /
``LLMEngine.step()``. The parts that do not need the engine (request building, output
mapping, priorities) are unit-tested; the rest is marked ``vllm`` and exercised by
``scripts/vllm_smoke.sh`` on a GPU machine.

``VLLMWorker`` (``worker=vllm``): each window submits every item as a token-id prompt
(prompt + generated ids, never re-encoded text) with ``max_tokens`` = its window budget;
automatic prefix caching keeps the prefix's KV blocks, so a resumed request is not
re-prefilled while its blocks are cached (vLLM evicts them LRU under memory pressure, then
recomputes: same tokens). Seeded sampling: each window's ``SamplingParams.seed`` is drawn
from ``make_rng(seed, f"sampling/<stream>/<position>")``; the token sequence then depends on
window boundaries (vLLM seeds once per call), unlike the HF engine's per-token streams.
Timing: offline ``generate`` returns at the end of the window only, so per-token times are
interpolated linearly between the window's start and end (token ``j`` of a window of ``n``
steps at ``start + (j+1)/n · (end − start)``); TTFT therefore has one-window resolution.
Continuous mode (``stop_on_first``) is approximated by giving every item the smallest
budget in the batch (vLLM's own continuous batching runs inside the window).

``VLLMPriorityRunner`` (``worker=vllm_priority``): static SJF on vLLM's own scheduler
(``--scheduling-policy priority``): every request is added at its arrival time with
``priority = round(first predicted tokens)`` (lower runs first; ties by arrival) and vLLM
runs it to the end with preemption by priority inside the engine. vLLM's maintainers
recommend keeping dynamic priorities outside the engine, which is what ISRTF's frontend does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from elis.rng import make_rng

log = logging.getLogger(__name__)

VLLM_VERSION = "0.11.0"


@dataclass(slots=True, frozen=True)
class VLLMRequestSpec:
    """What one window asks vLLM for one item (engine-free; see ``window_requests``)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_kwargs: dict


def window_seed(seed: int, stream: str, position: int) -> int:
    """The per-window vLLM sampling seed for ``stream`` starting at output ``position``."""
    return int(make_rng(seed, f"sampling/{stream}/{position}").integers(0, 2**31 - 1))


def window_requests(batch, prompt_ids: dict[str, list[int]], temperature: float, top_p: float,
                    seed: int, streams: dict[str, str] | None = None,
                    eos_token_ids: Sequence[int] | None = None) -> list[VLLMRequestSpec]:
    """The vLLM requests of a ``WindowBatch`` (items with ``max_new_tokens == 0`` skipped).

    Budget per item: ``max_new_tokens``, capped by ``batch.max_steps``; with
    ``stop_on_first`` every item gets the batch's smallest budget.

    Raises:
        ValueError: an item without prompt ids (names it).
    """
    items = [it for it in batch.items if it.max_new_tokens > 0]
    budgets = [it.max_new_tokens for it in items]
    if batch.max_steps is not None:
        budgets = [min(b, int(batch.max_steps)) for b in budgets]
    if batch.stop_on_first and budgets:
        budgets = [min(budgets)] * len(budgets)
    out = []
    for it, b in zip(items, budgets):
        ids = it.prompt_token_ids if it.prompt_token_ids is not None else prompt_ids.get(it.request_id)
        if ids is None:
            raise ValueError(f"request {it.request_id!r}: no prompt_token_ids for vLLM")
        kw: dict = {"max_tokens": int(b), "temperature": float(temperature), "top_p": float(top_p),
                    "skip_special_tokens": True}
        if temperature > 0:
            stream = (streams or {}).get(it.request_id, it.request_id)
            kw["seed"] = window_seed(seed, stream, len(it.output_token_ids))
        if eos_token_ids:
            kw["stop_token_ids"] = list(eos_token_ids)
        out.append(VLLMRequestSpec(it.request_id, list(ids) + list(it.output_token_ids), kw))
    return out


def window_results(batch, outputs: Sequence[Any], start_s: float, end_s: float,
                   eos_token_ids: Sequence[int] = ()) -> list:
    """Map vLLM ``RequestOutput``s (in ``window_requests`` order) to ``WindowResult``s.

    ``finish_reason``: vLLM 'stop' (EOS or a stop token) → 'eos', finished; 'length' →
    finished 'length' only if the request's ``max_tokens`` is reached, else the window
    boundary (not finished). Token times: linear interpolation (module docstring).

    EOS accounting (``elis.serving.metrics``, issue 11 item 10): vLLM keeps the EOS / stop
    token id at the end of ``token_ids`` (``stop_reason`` None for EOS, the int id for a stop
    token; a str only for stop strings, which we do not send). Like the HF worker, the result
    excludes it from the tokens but keeps its step's time as ``end_s``.
    """
    from elis.serving.workers.base import WindowResult

    run = [it for it in batch.items if it.max_new_tokens > 0]
    if len(outputs) != len(run):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(run)} requests")
    by_id = {}
    n_max = max((len(o.outputs[0].token_ids) for o in outputs), default=0)
    span = max(end_s - start_s, 0.0)
    for it, o in zip(run, outputs):
        c = o.outputs[0]
        ids = [int(t) for t in c.token_ids]
        times = [start_s + (j + 1) / n_max * span for j in range(len(ids))] if n_max else []
        end = times[-1] if times else start_s
        if c.finish_reason == "stop" or (ids and ids[-1] in set(eos_token_ids)):
            finished, reason = True, "eos"
            if ids and not isinstance(getattr(c, "stop_reason", None), str):
                ids, times = ids[:-1], times[:-1]  # the EOS / stop token: its step stays in end_s
        elif len(it.output_token_ids) + len(ids) >= it.max_tokens:
            finished, reason = True, "length"
        else:
            finished, reason = False, None
        by_id[it.request_id] = WindowResult(
            request_id=it.request_id, num_new_tokens=len(ids), new_token_ids=ids, new_text=c.text,
            finished=finished, finish_reason=reason, start_s=start_s,
            end_s=end, first_token_time_s=times[0] if times else None,
            token_times_s=times,
        )
    return [by_id.get(it.request_id) or WindowResult(it.request_id, 0, start_s=start_s, end_s=start_s)
            for it in batch.items]


class VLLMWorker:
    """A ``Worker`` running each window as one ``LLM.generate`` call (module docstring).

    Args:
        worker_id: its id.
        llm: a ``vllm.LLM`` built with ``enable_prefix_caching=True``.
        tokenizer: for chat-templated prompt ids (``llm.get_tokenizer()``).
        temperature, top_p, seed: sampling.
    """

    def __init__(self, worker_id: int, llm: Any, tokenizer: Any, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0) -> None:
        self.worker_id = worker_id
        self.llm = llm
        self.tokenizer = tokenizer
        self.temperature, self.top_p, self.seed = float(temperature), float(top_p), int(seed)
        self.sampling_streams: dict[str, str] = {}
        self._prompt_ids: dict[str, list[int]] = {}
        self.num_windows = 0

    @property
    def max_context_tokens(self) -> int | None:
        """The engine's ``max_model_len`` (the scheduler's context rule; untested without a GPU)."""
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except (AttributeError, TypeError, ValueError):
            return None

    def execute(self, batch, start_s: float) -> list:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from elis.serving.workers.hf import encode_prompt

        for it in batch.items:
            if it.prompt_token_ids is None and it.request_id not in self._prompt_ids:
                self._prompt_ids[it.request_id] = encode_prompt(self.tokenizer, it.prompt)
        specs = window_requests(batch, self._prompt_ids, self.temperature, self.top_p, self.seed,
                                self.sampling_streams)
        t0 = time.perf_counter()
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=s.prompt_token_ids) for s in specs],
                                    [SamplingParams(**s.sampling_kwargs) for s in specs], use_tqdm=False)
        self.num_windows += 1
        return window_results(batch, outputs, start_s, start_s + time.perf_counter() - t0)


def build_vllm_llm(worker_cfg: Any, scheduling_policy: str = "fcfs"):
    """``vllm.LLM`` from ``conf/worker/vllm*.yaml`` keys (prefix caching on)."""
    from vllm import LLM

    m = worker_cfg.get("model")
    return LLM(model=m.get("name_or_path"), dtype=m.get("dtype", "auto"), seed=int(worker_cfg.get("sampling", {}).get("seed", 0)),
               enable_prefix_caching=True, scheduling_policy=scheduling_policy,
               gpu_memory_utilization=float(worker_cfg.get("gpu_memory_utilization", 0.85)),
               max_model_len=worker_cfg.get("max_model_len"))


def build_vllm_worker(worker_cfg: Any, worker_id: int) -> VLLMWorker:
    llm = build_vllm_llm(worker_cfg)
    s = worker_cfg.get("sampling") or {}
    return VLLMWorker(worker_id, llm, llm.get_tokenizer(), float(s.get("temperature", 0.0)),
                      float(s.get("top_p", 1.0)), int(s.get("seed", 0)))


def priority_of(first_predicted_tokens: float | None) -> int:
    """vLLM priority (lower runs first) from the first prediction: static SJF.

    Raises:
        ValueError: no prediction (the priority baseline needs a predictor).
    """
    if first_predicted_tokens is None:
        raise ValueError("worker=vllm_priority needs a step-0 prediction for every request (set predictor=...)")
    return int(round(float(first_predicted_tokens)))


class VLLMPriorityRunner:
    """Serve a workload on one vLLM engine with ``scheduling_policy='priority'``.

    Requests are added at their (wall-clock) arrival times with ``priority_of(first
    prediction)``; ``LLMEngine.step()`` is called until all finish. Per-request first-token
    and finish times are the wall-clock times of the ``step()`` that returned them.
    """

    def __init__(self, llm: Any, temperature: float, top_p: float, seed: int, max_tokens: int) -> None:
        self.engine = llm.llm_engine
        self.temperature, self.top_p, self.seed, self.max_tokens = temperature, top_p, seed, max_tokens

    def run(self, requests: list, prompt_ids: list[list[int]]) -> None:
        """Serve ``requests`` (``Request`` objects with predictions, sorted by arrival);
        fills their tokens, times and finish reasons in place."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from elis.serving.request import RequestStatus

        t0 = time.perf_counter()
        now = lambda: time.perf_counter() - t0  # noqa: E731
        by_id = {r.request_id: r for r in requests}
        i, n, done = 0, len(requests), 0
        while done < n:
            while i < n and requests[i].arrival_time_s <= now():
                r = requests[i]
                kw = {"max_tokens": r.max_tokens, "temperature": self.temperature, "top_p": self.top_p}
                if self.temperature > 0:
                    kw["seed"] = window_seed(self.seed, r.request_id, 0)
                self.engine.add_request(r.request_id, TokensPrompt(prompt_token_ids=prompt_ids[i]),
                                        SamplingParams(**kw), priority=priority_of(r.first_predicted_tokens))
                r.status = RequestStatus.RUNNING
                i += 1
            if not self.engine.has_unfinished_requests():
                time.sleep(max(requests[i].arrival_time_s - now(), 0.0) if i < n else 0.0)
                continue
            for out in self.engine.step():
                r = by_id[out.request_id]
                t = now()
                c = out.outputs[0]
                if r.first_token_time_s is None and len(c.token_ids):
                    r.first_token_time_s = t
                if out.finished:
                    ids = list(c.token_ids)
                    r.finish_reason = "eos" if c.finish_reason == "stop" else "length"
                    if r.finish_reason == "eos" and ids and not isinstance(getattr(c, "stop_reason", None), str):
                        ids = ids[:-1]  # the EOS token is not an output token (elis.serving.metrics)
                    r.output_token_ids = ids
                    r.partial_response = c.text
                    r.num_generated_tokens = len(ids)
                    r.finish_time_s = t
                    r.status = RequestStatus.FINISHED
                    r.add_run_interval(r.first_token_time_s or t, t)
                    done += 1
