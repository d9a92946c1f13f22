"""Remote worker: one OpenAI-compatible inference server (``vllm serve``, ``python serve.py``, …).

A window is ONE streaming ``POST {url}/v1/completions`` per batch item with
``max_tokens = the item's window budget``. The server does its own batching of the concurrent
items; the ELIS scheduler in front decides which requests run and for how long.

Resume modes (``worker.resume``):

* ``token_ids`` (default, exact): ``prompt`` = the prompt's token ids + the tokens generated so
  far (a list of ints), ``return_token_ids: true``; each SSE chunk's ``choices[0].token_ids``
  carries the delta tokens. A request therefore resumes exactly where it stopped, on any server
  of the pool; with prefix caching (vLLM's default in v1) the resumed prefix is not recomputed.
  Server features needed: a token-id ``prompt`` on ``/v1/completions`` and the returned token ids
  (vLLM >= 0.10.2: ``return_token_ids``; ELIS's own ``serve.py``). A trailing EOS id (vLLM keeps
  it in ``token_ids``) is dropped, so counts match the in-process worker (EOS excluded).
* ``text``: for servers that take only text prompts (llama-cpp-python): ``prompt`` = the prompt
  text (decoded template) + the text generated so far; the token count comes from the chunk
  ``usage`` (``stream_options.include_usage``) and the new text is re-encoded locally for the
  token ids. Re-tokenising a resumed text can differ from the tokens the server generated; each
  window where the local count differs from the server's count is counted in
  ``stats.num_text_resume_mismatches`` (``num_new_tokens`` follows the server's count, which
  for vLLM includes a generated EOS token; ``serve.py`` excludes it, as the in-process worker).

Per-request errors: an HTTP 4xx for one item (e.g. the server's own context-length check) fails
that request alone (``WindowResult.error``). A connection error or 5xx is a worker fault
(``WorkerDied``): the wall-clock runner requeues the worker's requests on the other servers.

Cancellation (``cancel(request_id, reason)``): the item's HTTP request is cancelled on this
worker's event loop, which closes its connection; vLLM (and ``serve.py``) abort a request whose
client disconnected, so the in-flight window stops on the backend too.

Continuous mode (``stop_on_first``): items run independently with the same step cap; the worker
then truncates every item to the fewest tokens any item produced (extra tokens are discarded;
resumption by token ids makes that exact, prefix caching cheap).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from elis.serving.workers.base import WindowBatch, WindowItem, WindowResult, WorkerDied

log = logging.getLogger(__name__)

RESUME_MODES = ("token_ids", "text")


class ItemRejected(ValueError):
    """The server rejected one item (HTTP 4xx): that request fails alone."""


@dataclass(slots=True)
class RemoteStats:
    num_windows: int = 0
    num_http_requests: int = 0
    num_tokens: int = 0
    num_discarded_tokens: int = 0  # continuous mode: generated past the batch's common stop
    num_text_resume_mismatches: int = 0
    num_cancelled: int = 0
    busy_time_s: float = 0.0


class RemoteOpenAIWorker:
    """A ``Worker`` backed by one OpenAI-compatible server (see the module docstring).

    Args:
        worker_id: the worker's id.
        base_url: e.g. ``http://10.0.0.5:8000`` (``/v1`` is appended when missing).
        model: the served model name sent in every request.
        tokenizer: the served model's tokenizer (prompt encoding, EOS ids, text mode).
        resume: 'token_ids' | 'text'.
        max_context_tokens: the server's context length (None: asked from ``/v1/models``'s
            ``max_model_len`` at start, else unknown).
        timeout_s: per-HTTP-request timeout.
        api_key: sent as ``Authorization: Bearer``.
        sampling: default decoding options ``{temperature, top_p, seed}`` (a request's own
            ``SamplingOptions`` override them; a request without its own seed is sent one
            drawn from ``seed`` and its id, see ``request_seed``).

    Raises:
        ValueError: unknown ``resume`` (lists the valid ones).
    """

    def __init__(self, worker_id: int, base_url: str, model: str, tokenizer: Any, resume: str = "token_ids",
                 max_context_tokens: int | None = None, timeout_s: float = 300.0, api_key: str | None = None,
                 sampling: dict | None = None) -> None:
        import httpx

        if resume not in RESUME_MODES:
            raise ValueError(f"worker.resume={resume!r} is not one of {list(RESUME_MODES)}")
        self.worker_id = worker_id
        url = base_url.rstrip("/")
        self.base_url = url if url.endswith("/v1") else url + "/v1"
        self.model = model
        self.tokenizer = tokenizer
        self.resume = resume
        self.sampling = dict(sampling or {})
        self.stats = RemoteStats()
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_token_ids = {int(eos)} if isinstance(eos, int) else set()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"remote{worker_id}", daemon=True)
        self._thread.start()
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0), headers=headers,
                                         limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        self._tasks: dict[str, asyncio.Task] = {}
        self._cancel_reasons: dict[str, str] = {}
        self._prompt_text: dict[str, str] = {}
        # (request_id, token_id) → None as tokens arrive (windowed batches, token_ids mode only:
        # continuous batches may discard tokens past the batch's first stop)
        self.token_listener = None
        self.max_context_tokens = max_context_tokens if max_context_tokens is not None else self._ask_context()

    # ------------------------------------------------------------------ setup
    def _ask_context(self) -> int | None:
        try:
            body = self._call(self._client.get(f"{self.base_url}/models"), 30).json()
        except Exception as exc:  # a server without /v1/models still serves
            log.warning("worker %d: GET %s/models failed (%s); no context length known", self.worker_id,
                        self.base_url, exc)
            return None
        for m in body.get("data", []):
            if m.get("id") == self.model and m.get("max_model_len"):
                return int(m["max_model_len"])
        return None

    def _call(self, coro, timeout_s: float):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def close(self) -> None:
        self._call(self._client.aclose(), 30)
        self._loop.call_soon_threadsafe(self._loop.stop)

    # ------------------------------------------------------------------ worker seam
    def cancel(self, request_id: str, reason: str = "aborted") -> None:
        """Cancel ``request_id``'s HTTP request in flight (thread-safe); closes its connection."""
        def _do():
            t = self._tasks.get(request_id)
            if t is not None and not t.done():
                self._cancel_reasons[request_id] = reason
                t.cancel()
        self._loop.call_soon_threadsafe(_do)

    def execute(self, batch: WindowBatch, start_s: float) -> list[WindowResult]:
        """Run ``batch``: one concurrent streaming request per item; results in item order.

        Raises:
            WorkerDied: the server is unreachable or answered 5xx.
        """
        t0 = time.perf_counter()
        results = asyncio.run_coroutine_threadsafe(self._run_batch(batch, start_s, t0), self._loop).result()
        self.stats.num_windows += 1
        self.stats.busy_time_s += time.perf_counter() - t0
        return results

    async def _run_batch(self, batch: WindowBatch, start_s: float, t0: float) -> list[WindowResult]:
        cap = batch.max_steps
        tasks = []
        for it in batch.items:
            n = it.max_new_tokens if cap is None else min(it.max_new_tokens, cap)
            task = asyncio.create_task(self._run_item(it, n, stream=not batch.stop_on_first))
            self._tasks[it.request_id] = task
            tasks.append(task)
        outs = await asyncio.gather(*tasks, return_exceptions=True)
        for it in batch.items:
            self._tasks.pop(it.request_id, None)
        died = [o for o in outs if isinstance(o, WorkerDied)]
        if died:
            raise died[0]
        results = []
        for it, o in zip(batch.items, outs):
            if isinstance(o, BaseException):
                if isinstance(o, asyncio.CancelledError):
                    self.stats.num_cancelled += 1
                    msg = self._cancel_reasons.pop(it.request_id, "aborted")
                else:
                    msg = f"worker {self.worker_id}: request {it.request_id!r}: {o}"
                results.append(WindowResult(it.request_id, 0, start_s=start_s, end_s=start_s, error=msg))
                continue
            ids, text, reason, times, counted = o
            results.append(self._result(it, ids, text, reason, times, counted, start_s, t0))
        if batch.stop_on_first:
            self._truncate_to_first_stop(results, batch)
        return results

    def _result(self, it: WindowItem, ids, text, reason, times, counted, start_s, t0) -> WindowResult:
        ts = [start_s + (t - t0) for t in times]
        n = counted if counted is not None else len(ids)
        finished, why = False, None
        if reason == "stop":
            if ids and ids[-1] in self.eos_token_ids:
                ids, ts = ids[:-1], ts[:-1]
                n = min(n, len(ids)) if counted is None else max(n - 1, 0)
            finished, why = True, "eos"
        elif len(it.output_token_ids) + n >= it.max_tokens:
            finished, why = True, "length"
        n = min(n, it.max_new_tokens)
        self.stats.num_tokens += n
        return WindowResult(
            request_id=it.request_id, num_new_tokens=n, new_token_ids=list(ids), new_text=text,
            finished=finished, finish_reason=why, start_s=start_s, end_s=ts[-1] if ts else start_s,
            first_token_time_s=ts[0] if ts else None, token_times_s=ts,
        )

    def _truncate_to_first_stop(self, results: list[WindowResult], batch: WindowBatch) -> None:
        """``stop_on_first``: every item reports the fewest tokens any item produced."""
        live = [r for r in results if r.error is None]
        if not live:
            return
        k = min(r.num_new_tokens for r in live)
        for r in live:
            if r.num_new_tokens > k:
                self.stats.num_discarded_tokens += r.num_new_tokens - k
                r.num_new_tokens = k
                r.new_token_ids = r.new_token_ids[:k]
                r.new_text = self._decode(r.new_token_ids)
                r.token_times_s = (r.token_times_s or [])[:k]
                r.end_s = r.token_times_s[-1] if r.token_times_s else r.start_s
                r.first_token_time_s = r.token_times_s[0] if r.token_times_s else None
                r.finished, r.finish_reason = False, None

    # ------------------------------------------------------------------ one HTTP request
    def _prompt(self, it: WindowItem) -> list[int] | str:
        ids = it.prompt_token_ids
        if ids is None:
            from elis.serving.workers.hf import encode_prompt

            ids = encode_prompt(self.tokenizer, it.prompt)
        if self.resume == "token_ids":
            return list(ids) + list(it.output_token_ids)
        if it.request_id not in self._prompt_text:
            self._prompt_text[it.request_id] = self.tokenizer.decode(list(ids))
        return self._prompt_text[it.request_id] + self._decode(list(it.output_token_ids))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def request_seed(self, it: WindowItem) -> int:
        """The ``seed`` sent for every window of ``it``'s request: its own OpenAI ``seed``, else
        one drawn from (the worker's default seed, the request id), the same for all its
        windows, so a sampled request is one reproducible stream (see ``_body``)."""
        own = getattr(it.sampling, "seed", None)
        if own is not None:
            return int(own)
        from elis.rng import make_rng

        base = int(self.sampling.get("seed") or 0)
        return int(make_rng(base, f"sampling/{it.request_id}").integers(0, 2**31 - 1))

    def _body(self, it: WindowItem, n: int) -> dict:
        """One window's ``/v1/completions`` body.

        Sampling: ``temperature``/``top_p`` from the request (else the worker's defaults);
        ``seed`` = ``request_seed`` (the same in every window of the request); and the ELIS
        extension ``elis_position_offset`` = tokens generated so far (the end of the token-id
        prompt), so an ELIS backend (``serve.py``) keys window k's draws by (seed, output
        position) exactly as an in-process worker does: a seeded request gives the same tokens
        in one window, in many, or through gateway → backend. Other servers ignore the extension
        (vLLM accepts and ignores unknown fields); vLLM restarts its per-request generator from
        ``seed`` in every window, so its windows are reproducible run to run (same ``seed``,
        same boundaries) but not equal to one uninterrupted vLLM generation.
        """
        s = dict(self.sampling)
        opts = it.sampling
        if opts is not None:
            for k in ("temperature", "top_p"):
                if getattr(opts, k) is not None:
                    s[k] = getattr(opts, k)
        s["seed"] = self.request_seed(it)
        body = {"model": self.model, "prompt": self._prompt(it), "max_tokens": int(n), "stream": True,
                "stream_options": {"include_usage": True}, **{k: v for k, v in s.items() if v is not None}}
        if self.resume == "token_ids":  # text mode: servers (llama.cpp) whose strictness is unknown
            body["return_token_ids"] = True
            body["elis_position_offset"] = len(it.output_token_ids)
        return body

    async def _run_item(self, it: WindowItem, n: int, stream: bool = False):
        """Returns (new ids, text, finish_reason, token times, server-counted tokens or None)."""
        import httpx

        self.stats.num_http_requests += 1
        ids: list[int] = []
        text = ""
        reason = None
        times: list[float] = []
        counted = None
        try:
            async with self._client.stream("POST", f"{self.base_url}/completions", json=self._body(it, n)) as resp:
                if resp.status_code >= 400:
                    detail = (await resp.aread()).decode(errors="replace")[:500]
                    if resp.status_code >= 500:
                        raise WorkerDied(f"{self.base_url} answered HTTP {resp.status_code}: {detail}")
                    raise ItemRejected(f"HTTP {resp.status_code} from {self.base_url}: {detail}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise ItemRejected(f"{self.base_url}: {chunk['error']}")
                    if chunk.get("usage"):
                        counted = chunk["usage"].get("completion_tokens")
                    for ch in chunk.get("choices") or []:
                        new = ch.get("token_ids") or []
                        if self.resume == "token_ids" and ch.get("text") and not new and "token_ids" not in ch:
                            raise ItemRejected(f"{self.base_url} returned no token_ids; it needs vLLM >= 0.10.2 "
                                               "(return_token_ids) or use worker.resume=text")
                        now = time.perf_counter()
                        ids += [int(t) for t in new]
                        listener = self.token_listener
                        if stream and listener is not None and self.resume == "token_ids":
                            for t in new:
                                if int(t) not in self.eos_token_ids:
                                    listener(it.request_id, int(t))
                        times += [now] * len(new)
                        text += ch.get("text") or ""
                        if ch.get("finish_reason"):
                            reason = ch["finish_reason"]
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.TimeoutException) as exc:
            raise WorkerDied(f"{self.base_url}: {type(exc).__name__}: {exc}") from exc
        if self.resume == "text":
            ids = [int(t) for t in self.tokenizer(text, add_special_tokens=False)["input_ids"]]
            now = time.perf_counter()
            times = [now] * len(ids)
            if counted is not None and counted != len(ids):
                self.stats.num_text_resume_mismatches += 1
            return ids, text, reason, times, counted
        return ids, text, reason, times, None  # token ids are authoritative


def build_remote_worker(worker_cfg: Any, worker_id: int, shared: Any = None) -> tuple[RemoteOpenAIWorker, Any]:
    """A ``RemoteOpenAIWorker`` for server ``worker.urls[worker_id]`` (``conf/worker/remote.yaml``).

    ``shared`` carries the tokenizer between workers. Raises ``ValueError`` when
    ``worker_id`` has no URL (``num_workers`` must equal ``len(worker.urls)``).
    """
    get = worker_cfg.get
    urls = list(get("urls") or [])
    if not 0 <= worker_id < len(urls):
        raise ValueError(f"worker.urls has {len(urls)} entries {urls}; worker {worker_id} has none "
                         "(set num_workers to len(worker.urls))")
    tok = shared
    if tok is None:
        tok = load_tokenizer(get("tokenizer"), get("cache_dir", "cache"))
    s = get("sampling") or {}
    w = RemoteOpenAIWorker(worker_id, urls[worker_id], get("model_name"), tok, resume=get("resume", "token_ids"),
                           max_context_tokens=get("max_context_tokens"), timeout_s=float(get("timeout_s", 300)),
                           api_key=get("api_key"), sampling=dict(s))
    return w, tok


def load_tokenizer(spec: Any, cache_dir: str = "cache"):
    """The served model's tokenizer: a hub id / folder, or ``smollm2`` (the offline GGUF's)."""
    from transformers import AutoTokenizer

    if spec in (None, "smollm2"):
        from elis.serving.workers.hf import SMOLLM2_GGUF_FILE, SMOLLM2_GGUF_PACKAGE, load_causal_lm

        _, tok = load_causal_lm(cache_dir=cache_dir, gguf_package=SMOLLM2_GGUF_PACKAGE, gguf_file=SMOLLM2_GGUF_FILE)
        return tok
    return AutoTokenizer.from_pretrained(spec)
