"""OpenAI-compatible HTTP gateway over the serving runtime (``python serve.py``).

    client ──HTTP──► FastAPI app ──submit/cancel──► ServingLoop thread
                                                     WallClockRunner (the experiments' runner):
                                                     load balancer → per-worker Scheduler
                                                     (buffer, policy, windows, preemption)
                                                     → worker handles (hf | ray | remote URL)
    client ◄──SSE── RequestStream ◄── per-window tokens (listener, thread-safe hand-off)

One request path: the gateway submits ``Request`` objects to the same ``WallClockRunner`` the
wall-clock experiments use (``elis.serving.wallclock``); it adds only HTTP, detokenisation,
stop strings and metrics.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream`` SSE or one JSON;
``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``; ``n`` must be 1), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus text). Extensions (vLLM's names): a completion
``prompt`` may be a list of token ids; ``elis_position_offset: k`` (sent by ``worker=remote``) says the
prompt's last k tokens are the request's earlier output, so seeded sampling continues at output
position k (window k of a request draws the same tokens on any backend); ``return_token_ids: true`` adds ``prompt_token_ids`` and
per-choice ``token_ids`` (what ``elis.serving.workers.remote`` needs from a backend, so this
gateway is also "our own backend server").

Request lifecycle:
* ``max_tokens`` absent → ``min(default_max_tokens, context length − prompt tokens)``
  (``default_max_tokens`` null: the whole remaining context, as vLLM does);
  prompt + ``max_tokens`` beyond the context length → HTTP 400 naming the limit.
* Bad input → HTTP 400 in OpenAI's error shape, ``param`` naming the field.
* A client that disconnects (or a stream that is closed) cancels its request at once:
  queued → failed now; in a window → the window item is aborted on the worker (in-process:
  at the next decode step; remote: its HTTP request is closed) and the slot is free when the
  window returns.
* ``stop`` strings are searched in the full decoded text (so a stop string split across two
  windows is found); the request ends with ``finish_reason='stop'`` and the text before the
  stop string. While streaming, the last ``len(longest stop) − 1`` characters are held back
  until they cannot start a stop string.
* One stream and one ``usage`` record per request whatever the windows, preemptions or worker
  moves (prompt tokens counted once; completion tokens = tokens generated, as vLLM counts).
* A request the backend cannot run fails alone: HTTP 500 (non-streaming) or an ``error`` SSE
  event carrying the reason; the worker keeps serving.

Metrics (``/metrics``, vLLM-style names with prefix ``elis:``): gauges ``num_requests_waiting``,
``num_requests_running``; counters ``num_preemptions_total``, ``num_predictions_total``,
``request_success_total``, ``request_failure_total``, ``request_cancelled_total``,
``generation_tokens_total``; histograms ``time_to_first_token_seconds``,
``e2e_request_latency_seconds`` (JCT), ``request_queue_time_seconds`` (JCT − executed time).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from elis.serving.request import Request, RequestStatus, SamplingOptions

log = logging.getLogger(__name__)

FINISH_TO_OPENAI = {"eos": "stop", "stop": "stop", "length": "length"}


class GatewayError(ValueError):
    """A request the gateway rejects: HTTP ``status`` with OpenAI's error body naming ``param``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


# ---------------------------------------------------------------------- per-request stream
@dataclass(slots=True)
class StreamEvent:
    """What the loop thread hands to a client: text delta, or the end (finish/failure)."""

    kind: str  # 'delta' | 'end'
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    request: Request | None = None


class RequestStream:
    """Detokenises a request's tokens incrementally and applies its stop strings.

    ``advance(final)`` returns the new text of ``ids`` to emit and whether a stop string was
    found. ``ids`` grows token by token while a window runs (in-process and remote windowed
    workers call ``ServingLoop.on_token`` on their thread) and is reset to the request's
    confirmed tokens at every window end (``on_progress``) and when a dead worker's window is
    discarded (``on_rollback``: the tokens are regenerated, identically for greedy and for the
    in-process worker's position-seeded sampling). Text is decoded from the FULL id list each time (decode→encode is
    not an identity, and a multi-byte character can straddle windows); a trailing U+FFFD
    (incomplete UTF-8) and the last ``len(longest stop) − 1`` characters are held back unless
    ``final``.
    """

    def __init__(self, tokenizer: Any, stop: list[str], loop: asyncio.AbstractEventLoop,
                 provisional: bool = True) -> None:
        self.tokenizer = tokenizer
        self.provisional = provisional  # stream tokens as generated, before the window ends
        self.lock = threading.Lock()
        self.ids: list[int] = []  # tokens known so far (confirmed by windows + provisional)
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.loop = loop
        self.queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        self.emitted = 0  # characters of the decoded text already sent
        self.num_ids_sent = 0
        self.stopped = False
        self.text = ""

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is None or not ids:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def advance(self, final: bool) -> tuple[str, bool]:
        """The new text of ``self.ids`` to emit, and whether a stop string was found (hold the
        lock)."""
        if self.stopped:
            return "", True
        text = self.decode(self.ids)
        cut = None
        if self.stop:
            start = max(self.emitted - self.hold, 0)
            hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                cut = min(hits)
        if cut is not None:
            self.stopped = True
            upto = cut
        elif final:
            upto = len(text)
        else:
            upto = len(text) - self.hold
            while upto > self.emitted and text[upto - 1] == "\ufffd":
                upto -= 1
        self.text = text[:upto] if cut is not None else text
        delta = text[self.emitted:upto] if upto > self.emitted else ""
        self.emitted = max(self.emitted, upto)
        return delta, self.stopped

    def put(self, ev: StreamEvent) -> None:
        """Hand ``ev`` to the client's coroutine (thread-safe)."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)


# ---------------------------------------------------------------------- the loop thread
class ServingLoop:
    """Runs a ``WallClockRunner`` (no table) on its own thread; thread-safe submit/cancel.

    Args:
        runtime: ``elis.serving.runtime.Runtime`` (schedulers, balancer, handles, predictor).
        continuous_max_steps: decode steps per segment in continuous mode.
        metrics: a ``GatewayMetrics`` (observes every terminal request) or None.
    """

    def __init__(self, runtime, continuous_max_steps: int = 8, metrics: GatewayMetrics | None = None) -> None:
        from elis.serving.wallclock import WallClockRunner

        self.runtime = runtime
        self.runner = WallClockRunner(None, runtime.schedulers, runtime.handles, runtime.load_balancer,
                                      runtime.prediction, continuous_max_steps=continuous_max_steps,
                                      listener=self, keep_records=False)
        self.metrics = metrics
        self.streams: dict[str, RequestStream] = {}
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="elis-serving-loop", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        for h in self.runtime.handles:
            setter = getattr(h, "set_token_listener", None)
            if setter is not None:
                setter(self.on_token)
        self.runner.start_clock()
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self.runner.wake()
        self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def now(self) -> float:
        return self.runner.now()

    # commands (any thread)
    def submit(self, r: Request, stream: RequestStream) -> None:
        self._commands.put(("submit", r, stream))
        self.runner.wake()

    def cancel(self, request_id: str, reason: str) -> None:
        self._commands.put(("cancel", request_id, reason))
        self.runner.wake()

    # loop thread
    def _main(self) -> None:
        try:
            while not self._stop.is_set():
                self.runner.arm_wake()
                self._drain()
                self.runner.step(0.5)
        except BaseException as exc:  # the server reports it on /health and fails what it holds
            self.error = exc
            log.exception("serving loop stopped")
            for rid, st in list(self.streams.items()):
                st.put(StreamEvent("end", request=None, text=f"serving loop failed: {exc}"))
                self.streams.pop(rid, None)

    def _drain(self) -> None:
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            if cmd[0] == "submit":
                _, r, stream = cmd
                r.arrival_time_s = self.runner.now()
                self.streams[r.request_id] = stream
                try:
                    self.runner.submit(r)
                except Exception as exc:  # e.g. a predictor error on this request's text
                    self.runner.active.pop(r.request_id, None)
                    r.status, r.fail_reason = RequestStatus.FAILED, f"{type(exc).__name__}: {exc}"
                    self.on_terminal(r)
            else:
                _, rid, reason = cmd
                self.runner.cancel(rid, reason)

    # token listener (worker threads, while a window runs)
    def on_token(self, request_id: str, token_id: int) -> None:
        st = self.streams.get(request_id)
        if st is None or not st.provisional:
            return
        with st.lock:
            st.ids.append(int(token_id))
            delta, _ = st.advance(final=False)
            ids = st.ids[st.num_ids_sent:]
            st.num_ids_sent = max(st.num_ids_sent, len(st.ids))
        if delta or ids:
            st.put(StreamEvent("delta", delta, list(ids)))

    # listener (called by the runner on the loop thread)
    def on_progress(self, r: Request, result) -> bool:
        st = self.streams.get(r.request_id)
        if st is None:
            return False
        with st.lock:
            st.ids = list(r.output_token_ids)  # the window's tokens, confirmed
            delta, stopped = st.advance(final=False)
            ids = r.output_token_ids[st.num_ids_sent:]
            st.num_ids_sent = len(r.output_token_ids)
        if delta or ids:
            st.put(StreamEvent("delta", delta, list(ids)))
        return stopped

    def on_rollback(self, r: Request) -> None:
        """A dead worker's window was discarded: forget its provisional tokens (ids already
        sent are not sent again: the next worker regenerates the same tokens)."""
        st = self.streams.get(r.request_id)
        if st is not None:
            with st.lock:
                st.ids = list(r.output_token_ids)

    def on_terminal(self, r: Request) -> None:
        st = self.streams.pop(r.request_id, None)
        if self.metrics is not None:
            self.metrics.observe(r)
        if st is None:
            return
        if r.status is RequestStatus.FINISHED:
            with st.lock:
                st.ids = list(r.output_token_ids)
                delta, stopped = st.advance(final=True)
                ids = r.output_token_ids[st.num_ids_sent:]
                st.num_ids_sent = len(r.output_token_ids)
            if stopped:
                r.finish_reason = "stop"
            if delta or ids:
                st.put(StreamEvent("delta", delta, list(ids)))
        st.put(StreamEvent("end", request=r))


# ---------------------------------------------------------------------- metrics
class GatewayMetrics:
    """Prometheus metrics of one gateway (own ``CollectorRegistry``; see the module docstring)."""

    def __init__(self, schedulers: list) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.schedulers = schedulers
        buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
        self.ttft = Histogram("elis:time_to_first_token_seconds", "Time to first token (s)",
                              buckets=buckets, registry=self.registry)
        self.jct = Histogram("elis:e2e_request_latency_seconds", "Arrival to finish (JCT, s)",
                             buckets=buckets, registry=self.registry)
        self.queue_time = Histogram("elis:request_queue_time_seconds", "JCT minus executed time (s)",
                                    buckets=buckets, registry=self.registry)
        self.success = Counter("elis:request_success", "Finished requests", ["finished_reason"],
                               registry=self.registry)
        self.failure = Counter("elis:request_failure", "Failed requests (incl. cancelled)",
                               registry=self.registry)
        self.cancelled = Counter("elis:request_cancelled", "Requests cancelled by the client",
                                 registry=self.registry)
        self.tokens = Counter("elis:generation_tokens", "Generated tokens", registry=self.registry)
        self.registry.register(_SchedulerCollector(schedulers))

    def observe(self, r: Request) -> None:
        self.tokens.inc(r.num_generated_tokens)
        if r.status is RequestStatus.FINISHED:
            self.success.labels(FINISH_TO_OPENAI.get(r.finish_reason or "", r.finish_reason or "")).inc()
            jct = r.jct_s or 0.0
            self.jct.observe(jct)
            self.queue_time.observe(max(jct - r.executed_time_s, 0.0))
            if r.first_token_time_s is not None:
                self.ttft.observe(r.first_token_time_s - r.arrival_time_s)
        else:
            self.failure.inc()
            if (r.fail_reason or "").startswith("cancelled"):
                self.cancelled.inc()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _SchedulerCollector:
    """Reads the schedulers' queues and counters at scrape time."""

    def __init__(self, schedulers: list) -> None:
        self.schedulers = schedulers

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.schedulers
        yield GaugeMetricFamily("elis:num_requests_waiting", "Requests waiting in the priority buffers",
                                value=sum(len(x.buffer) + len(x._pending) for x in s))
        yield GaugeMetricFamily("elis:num_requests_running", "Requests holding a batch slot",
                                value=sum(len(x.running) for x in s))
        yield CounterMetricFamily("elis:num_preemptions", "Preemptions at window boundaries",
                                  value=sum(x.num_preemptions for x in s))
        yield CounterMetricFamily("elis:num_predictions", "Length predictions made",
                                  value=sum(x.num_predictions for x in s))


# ---------------------------------------------------------------------- request parsing
@dataclass(slots=True)
class GatewayConfig:
    """Gateway settings (``conf/serve.yaml``).

    Attributes:
        model_name: the id ``/v1/models`` lists and responses carry.
        max_context_tokens: the served model's context length (prompt + output), or None.
        default_max_tokens: ``max_tokens`` when a request has none (capped by the context
            left); None → the whole context left.
        chat_template: encode completion prompts as one chat user turn (chat requests always
            use the tokenizer's chat template when it has one).
        request_timeout_s: a non-streaming request that takes longer is cancelled (HTTP 504).
    """

    model_name: str
    max_context_tokens: int | None = None
    default_max_tokens: int | None = None
    chat_template: bool = False
    request_timeout_s: float = 600.0


def _field(body: dict, name: str, kind, default=None, check=None, why: str = ""):
    v = body.get(name, default)
    if v is None:
        return default
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool or (check is not None and not check(v)):
        raise GatewayError(f"'{name}' must be {why or kind.__name__}; got {v!r}", param=name)
    return v


class Gateway:
    """The request logic behind the HTTP routes (no FastAPI here; ``build_app`` wraps it).

    Args:
        loop: the ``ServingLoop`` (started by ``start``).
        tokenizer: the served model's tokenizer.
        config: ``GatewayConfig``.
    """

    def __init__(self, loop: ServingLoop, tokenizer: Any, config: GatewayConfig) -> None:
        self.loop = loop
        self.tokenizer = tokenizer
        self.config = config
        self.metrics = getattr(loop, "metrics", None)

    # parsing ---------------------------------------------------------------
    def _prompt_ids(self, body: dict, chat: bool) -> tuple[list[int], str]:
        from elis.serving.workers.hf import encode_prompt

        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs or not all(
                    isinstance(m, dict) and isinstance(m.get("role"), str) for m in msgs):
                raise GatewayError("'messages' must be a non-empty list of {role, content} objects; "
                                   f"got {msgs!r}"[:300], param="messages")
            norm = []
            for i, m in enumerate(msgs):
                c = m.get("content")
                if isinstance(c, list):  # OpenAI content parts: keep the text parts
                    c = "".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
                if not isinstance(c, str):
                    raise GatewayError(f"'messages[{i}].content' must be a string; got {c!r}"[:300],
                                       param=f"messages[{i}].content")
                norm.append({"role": m["role"], "content": c})
            if getattr(self.tokenizer, "chat_template", None):
                enc = self.tokenizer.apply_chat_template(norm, add_generation_prompt=True, tokenize=True)
                ids = enc["input_ids"] if hasattr(enc, "keys") else enc
                return [int(t) for t in ids], norm[-1]["content"]
            text = "\n".join(f"{m['role']}: {m['content']}" for m in norm) + "\nassistant:"
            return [int(t) for t in self.tokenizer(text)["input_ids"]], norm[-1]["content"]
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
            p = p[0]  # a batch of one
        if isinstance(p, str):
            ids = encode_prompt(self.tokenizer, p, chat_template=self.config.chat_template) if p else []
            return ids, p
        if isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            vocab = len(self.tokenizer) if self.tokenizer is not None else None
            bad = [t for t in p if t < 0 or (vocab is not None and t >= vocab)]
            if bad:
                raise GatewayError(f"'prompt' token ids must be in [0, {vocab}); got {bad[:5]}", param="prompt")
            return list(p), self.tokenizer.decode(p) if self.tokenizer is not None else ""
        raise GatewayError("'prompt' must be a string or a list of token ids (one prompt per request); "
                           f"got {type(p).__name__}", param="prompt")

    def parse(self, body: Any, chat: bool) -> tuple[Request, list[str], dict]:
        """Validate an OpenAI request body; returns (request, stop strings, options).

        Raises:
            GatewayError: a bad field (HTTP 400 naming it) or a context-length violation.
        """
        if not isinstance(body, dict):
            raise GatewayError("the request body must be a JSON object", param=None)
        _field(body, "n", int, 1, lambda v: v == 1, "1 (one choice per request)")
        if body.get("echo"):
            raise GatewayError("'echo' is not supported", param="echo")
        temperature = _field(body, "temperature", float, None, lambda v: 0 <= v <= 2 and v == v, "in [0, 2]")
        top_p = _field(body, "top_p", float, None, lambda v: 0 < v <= 1, "in (0, 1]")
        seed = _field(body, "seed", int, None, lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)")
        stream = _field(body, "stream", bool, False)
        stop = body.get("stop")
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
            raise GatewayError(f"'stop' must be a string or a list of at most 4 strings; got {stop!r}"[:300],
                               param="stop")
        ids, prompt_text = self._prompt_ids(body, chat)
        if not ids and getattr(self.tokenizer, "bos_token_id", None) is None:
            raise GatewayError("'prompt' is empty and the model has no BOS token to start from", param="prompt")
        name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = _field(body, name, int, None, lambda v: v >= 1, "an integer >= 1")
        ctx = self.config.max_context_tokens
        n_prompt = len(ids)
        if ctx is not None:
            if n_prompt >= ctx:
                raise GatewayError(f"This model's maximum context length is {ctx} tokens; the prompt has "
                                   f"{n_prompt} tokens (max_context_tokens={ctx})", param="prompt")
            if max_tokens is not None and n_prompt + max_tokens > ctx:
                raise GatewayError(
                    f"This model's maximum context length is {ctx} tokens. However, you requested "
                    f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} for the "
                    f"completion); lower '{name}' to at most {ctx - n_prompt}", param=name)
        if max_tokens is None:
            left = (ctx - n_prompt) if ctx is not None else None
            cands = [v for v in (self.config.default_max_tokens, left) if v is not None]
            if not cands:
                raise GatewayError(f"'{name}' is required: the gateway has no context length or "
                                   "default_max_tokens configured", param=name)
            max_tokens = min(cands)
        # ELIS extension (sent by worker=remote): how many of this request's earlier output
        # tokens end the prompt, so seeded draws continue at that output position
        offset = _field(body, "elis_position_offset", int, 0, lambda v: 0 <= v <= n_prompt,
                        f"an integer in [0, {n_prompt}] (at most the prompt's tokens)")
        try:
            sampling = SamplingOptions(temperature, top_p, seed, offset)
        except ValueError as exc:
            raise GatewayError(str(exc), param="temperature" if "temperature" in str(exc) else "top_p") from exc
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        r = Request(request_id=rid, prompt=prompt_text, arrival_time_s=0.0, num_prompt_tokens=n_prompt,
                    max_tokens=int(max_tokens), prompt_token_ids=ids, sampling=sampling)
        so = body.get("stream_options") or {}
        opts = {"stream": stream, "chat": chat, "include_usage": bool(isinstance(so, dict) and so.get("include_usage")),
                "return_token_ids": bool(body.get("return_token_ids")), "model": body.get("model")}
        return r, stop, opts

    # serving ---------------------------------------------------------------
    def submit(self, r: Request, stop: list[str], provisional: bool = True) -> RequestStream:
        """Hand ``r`` to the loop; ``provisional``: stream tokens as they are generated (else
        window by window)."""
        if not self.loop.alive:
            raise GatewayError(f"the serving loop is down: {self.loop.error}", status=503)
        st = RequestStream(self.tokenizer, stop, asyncio.get_running_loop(), provisional=provisional)
        self.loop.submit(r, st)
        return st

    def cancel(self, r: Request, reason: str = "cancelled: client disconnected") -> None:
        if not r.status.is_terminal:
            self.loop.cancel(r.request_id, reason)

    def usage(self, r: Request) -> dict:
        return {"prompt_tokens": r.num_prompt_tokens, "completion_tokens": r.num_generated_tokens,
                "total_tokens": r.num_prompt_tokens + r.num_generated_tokens}

    def chunk(self, r: Request, opts: dict, text: str | None, ids: list[int] | None,
              finish_reason: str | None, created: int) -> dict:
        model = self.config.model_name
        if opts["chat"]:
            delta = {} if text is None else {"content": text}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            obj = "text_completion"
        if opts["return_token_ids"] and ids is not None:
            choice["token_ids"] = ids
        out = {"id": r.request_id, "object": obj, "created": created, "model": model, "choices": [choice]}
        return out

    def final(self, r: Request, st: RequestStream, opts: dict, ids: list[int], created: int) -> dict:
        fr = FINISH_TO_OPENAI.get(r.finish_reason or "", r.finish_reason)
        if opts["chat"]:
            choice = {"index": 0, "message": {"role": "assistant", "content": st.text},
                      "logprobs": None, "finish_reason": fr}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": st.text, "logprobs": None, "finish_reason": fr}
            obj = "text_completion"
        out = {"id": r.request_id, "object": obj, "created": created, "model": self.config.model_name,
               "choices": [choice], "usage": self.usage(r)}
        if opts["return_token_ids"]:
            choice["token_ids"] = ids
            out["prompt_token_ids"] = list(r.prompt_token_ids or [])
        return out


def error_body(message: str, param: str | None, status: int) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


# ---------------------------------------------------------------------- FastAPI app
def build_app(gateway: Gateway):
    """The FastAPI application over ``gateway`` (routes listed in the module docstring)."""
    from fastapi import FastAPI, Request as HTTPRequest
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    app = FastAPI(title="ELIS gateway", version="0.1")
    app.state.gateway = gateway

    def err(exc: GatewayError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), exc.param, exc.status), status_code=exc.status)

    @app.get("/health")
    async def health():
        if not gateway.loop.alive:
            return JSONResponse({"status": "error", "error": str(gateway.loop.error)}, status_code=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": gateway.config.model_name, "object": "model", "created": 0, "owned_by": "elis",
            "max_model_len": gateway.config.max_context_tokens}]}

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(gateway.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def handle(http: HTTPRequest, chat: bool):
        try:
            body = await http.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return err(GatewayError(f"the request body is not valid JSON: {exc}"))
        try:
            r, stop, opts = gateway.parse(body, chat)
            st = gateway.submit(r, stop)
        except GatewayError as exc:
            return err(exc)
        created = int(time.time())
        if opts["stream"]:
            return StreamingResponse(_sse(gateway, r, st, opts, created), media_type="text/event-stream")
        return await _collect(gateway, http, r, st, opts, created)

    async def completions(http):
        return await handle(http, chat=False)

    async def chat_completions(http):
        return await handle(http, chat=True)

    # real annotation objects: this module's `from __future__ import annotations` would leave
    # FastAPI a string it cannot resolve (it would read `http` as a query parameter)
    for fn, path in ((completions, "/v1/completions"), (chat_completions, "/v1/chat/completions")):
        fn.__annotations__["http"] = HTTPRequest
        app.post(path)(fn)
    return app


async def _next_event(st: RequestStream, http, timeout_s: float) -> StreamEvent | None:
    """The next event, or None when the client disconnected (polled every 0.1 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await asyncio.wait_for(st.queue.get(), timeout=0.1)
        except asyncio.TimeoutError:
            if await http.is_disconnected():
                return None
            if time.monotonic() > deadline:
                raise


async def _collect(gateway: Gateway, http, r: Request, st: RequestStream, opts: dict, created: int):
    """Non-streaming: wait for the end (cancelling on disconnect or timeout), one JSON body."""
    from fastapi.responses import JSONResponse

    ids: list[int] = []
    try:
        while True:
            try:
                ev = await _next_event(st, http, gateway.config.request_timeout_s)
            except asyncio.TimeoutError:
                gateway.cancel(r, "cancelled: request_timeout_s exceeded")
                return JSONResponse(error_body(f"request timed out after {gateway.config.request_timeout_s} s",
                                               None, 504), status_code=504)
            if ev is None:
                gateway.cancel(r)
                return JSONResponse(error_body("client disconnected", None, 499), status_code=499)
            if ev.kind == "delta":
                ids += ev.token_ids
                continue
            if ev.request is None or ev.request.status is not RequestStatus.FINISHED:
                reason = ev.text if ev.request is None else ev.request.fail_reason
                return JSONResponse(error_body(f"request {r.request_id} failed: {reason}", None, 500),
                                    status_code=500)
            return JSONResponse(gateway.final(r, st, opts, ids, created))
    except asyncio.CancelledError:
        gateway.cancel(r)
        raise


def _sse_line(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


async def _sse(gateway: Gateway, r: Request, st: RequestStream, opts: dict, created: int):
    """The SSE body: a role chunk (chat), one chunk per text delta, a finish chunk, an optional
    usage chunk, ``[DONE]``. Closing the stream (client gone) cancels the request."""
    try:
        if opts["chat"]:
            first = gateway.chunk(r, opts, None, None, None, created)
            first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            yield _sse_line(first)
        while True:
            ev = await st.queue.get()
            if ev.kind == "delta":
                if ev.text or opts["return_token_ids"]:
                    yield _sse_line(gateway.chunk(r, opts, ev.text, ev.token_ids, None, created))
                continue
            req = ev.request
            if req is None or req.status is not RequestStatus.FINISHED:
                reason = ev.text if req is None else req.fail_reason
                yield _sse_line(error_body(f"request {r.request_id} failed: {reason}", None, 500))
                yield "data: [DONE]\n\n"
                return
            fr = FINISH_TO_OPENAI.get(req.finish_reason or "", req.finish_reason)
            yield _sse_line(gateway.chunk(r, opts, "" if not opts["chat"] else None, [], fr, created))
            if opts["include_usage"]:
                u = gateway.chunk(r, opts, None, None, None, created)
                u["choices"] = []
                u["usage"] = gateway.usage(req)
                yield _sse_line(u)
            yield "data: [DONE]\n\n"
            return
    finally:  # normal end: the request is terminal and this is a no-op; else the client left
        gateway.cancel(r)


# ---------------------------------------------------------------------- composition
def build_gateway(runtime, config: GatewayConfig, continuous_max_steps: int = 8) -> tuple[Gateway, Any]:
    """A started ``ServingLoop`` + ``Gateway`` over ``runtime`` and its FastAPI app.

    Call ``gateway.loop.close()`` when done (``serve`` does on shutdown).
    """
    metrics = GatewayMetrics(runtime.schedulers)
    loop = ServingLoop(runtime, continuous_max_steps=continuous_max_steps, metrics=metrics)
    gw = Gateway(loop, runtime.tokenizer, config)
    loop.start()
    return gw, build_app(gw)


def gateway_config(cfg, runtime) -> GatewayConfig:
    """``GatewayConfig`` from ``conf/serve.yaml`` keys and the runtime's context length."""
    ctx = runtime.max_context_tokens
    name = cfg.get("served_model_name")
    if not name:
        m = cfg.worker.get("model") or {}
        name = cfg.worker.get("model_name") or m.get("name_or_path") or "elis"
    dmt = cfg.get("default_max_tokens")
    return GatewayConfig(model_name=str(name), max_context_tokens=ctx,
                         default_max_tokens=None if dmt is None else int(dmt),
                         chat_template=bool(cfg.get("chat_template", False)),
                         request_timeout_s=float(cfg.get("request_timeout_s", 600.0)))


def serve(cfg) -> None:
    """``python serve.py``: build the runtime from ``cfg`` and serve HTTP until interrupted."""
    import hydra.utils
    import uvicorn
    from omegaconf import OmegaConf

    from elis.serving.runtime import SCHED_KEYS, build_prediction_service, build_runtime

    cost_model = hydra.utils.instantiate(cfg.cost_model) if cfg.get("cost_model") else None
    sched = {k: v for k, v in OmegaConf.to_container(cfg.sched, resolve=True).items() if k in SCHED_KEYS}
    prediction = build_prediction_service(cfg, cost_model, latency_source="measured")
    runtime = build_runtime(cfg, sched, prediction, cost_model)
    gw, app = build_gateway(runtime, gateway_config(cfg, runtime),
                            continuous_max_steps=int(cfg.worker.get("continuous_max_steps", 8)))
    log.info("serving %s on http://%s:%d/v1 (%d worker(s), %s/%s)", gw.config.model_name, cfg.host, cfg.port,
             len(runtime.handles), sched["policy"], sched.get("mode", "windowed"))
    try:
        uvicorn.run(app, host=str(cfg.host), port=int(cfg.port), log_level=str(cfg.get("log_level", "info")))
    finally:
        gw.loop.close()
