"""A deterministic OpenAI-compatible backend that answers at once, for tests and gateway benchmarks.

``python -m elis.experiments.instant_backend --port 8100 [--token-delay-ms 0]`` serves
``POST /v1/completions``, ``POST /v1/chat/completions`` (SSE streaming or one JSON),
``GET /v1/models`` (one model, ``instant``), ``GET /health`` and ``GET /metrics``
(``instant_requests_total``, ``instant_tokens_total``). No model runs: it measures what is in
front of it (the gateway's own dispatch rate and per-window overhead, the load generator).

Answers (hand-computable):
* text prompt of C characters (chat: the last message's content): ``n = min(max_tokens, C)``
  tokens, finish_reason 'length' when ``n == max_tokens`` else 'stop';
* token-id prompt (a list of ints, vLLM's extension; what ``worker=remote`` sends):
  ``n = max_tokens`` tokens, finish_reason 'length';
* token ``i`` of an answer has text ``"t<i> "`` and id ``100 + i % 1000`` (returned in
  ``choices[0].token_ids`` when ``return_token_ids`` is true, as vLLM does);
* ``stream_options.include_usage`` adds a usage chunk; prompt tokens = the id list's length,
  or the number of whitespace-separated words of a text prompt.
Faults chosen by a text prompt's content: 'FAIL400' → HTTP 400 with ``param: prompt``;
'CUT' → the stream stops after one chunk without a finish_reason; 'ERRCHUNK' → an
``{"error": …}`` chunk; 'SLOW' → 0.2 s per token.
A client that disconnects stops its generator (counted in ``instant_cancelled_total``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from contextlib import contextmanager

log = logging.getLogger(__name__)

MODEL_ID = "instant"


def token_id(i: int) -> int:
    """The id of the ``i``-th answer token."""
    return 100 + i % 1000


def make_app(token_delay_s: float = 0.0):
    """The Starlette app (see the module docstring); ``token_delay_s`` sleeps before each token."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    stats = {"requests": 0, "tokens": 0, "cancelled": 0}

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": MODEL_ID, "object": "model", "max_model_len": 1 << 20}]})

    async def health(request):
        return PlainTextResponse("ok")

    async def metrics(request):
        lines = []
        for k in ("requests", "tokens", "cancelled"):
            lines += [f"# TYPE instant_{k} counter", f"instant_{k}_total {stats[k]}"]
        return PlainTextResponse("\n".join(lines) + "\n")

    async def serve(request, chat: bool):
        body = await request.json()
        stats["requests"] += 1
        prompt = body["messages"][-1]["content"] if chat else body.get("prompt")
        ids_prompt = isinstance(prompt, list)
        text = "" if ids_prompt else str(prompt)
        if "FAIL400" in text:
            return JSONResponse({"error": {"message": "prompt: FAIL400 is not allowed", "type": "invalid_request_error",
                                           "param": "prompt", "code": 400}}, status_code=400)
        max_tokens = int(body.get("max_tokens") or 16)
        n = max_tokens if ids_prompt else min(max_tokens, len(text))
        finish = "length" if n == max_tokens else "stop"
        delay = 0.2 if "SLOW" in text else token_delay_s
        want_ids = bool(body.get("return_token_ids"))
        num_prompt = len(prompt) if ids_prompt else len(text.split())
        usage = {"prompt_tokens": num_prompt, "completion_tokens": n, "total_tokens": num_prompt + n}

        def choice(i: int | None, fin: str | None) -> dict:
            piece = f"t{i} " if i is not None else ""
            c: dict = ({"index": 0, "delta": {"content": piece} if piece else {}, "finish_reason": fin} if chat
                       else {"index": 0, "text": piece, "finish_reason": fin})
            if want_ids:
                c["token_ids"] = [token_id(i)] if i is not None else []
            return c

        obj = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            stats["tokens"] += n
            if delay:
                await asyncio.sleep(delay * n)
            c = choice(None, finish)
            full = "".join(f"t{i} " for i in range(n))
            if chat:
                c["message"] = {"role": "assistant", "content": full}
                c.pop("delta")
            else:
                c["text"] = full
            if want_ids:
                c["token_ids"] = [token_id(i) for i in range(n)]
            return JSONResponse({"id": "instant", "object": obj, "model": MODEL_ID, "choices": [c], "usage": usage})

        def sse(payload: dict) -> str:
            return "data: " + json.dumps({"id": "instant", "object": obj + ".chunk", "model": MODEL_ID, **payload}) + "\n\n"

        async def gen():
            try:
                for i in range(n):
                    if delay:
                        await asyncio.sleep(delay)
                    stats["tokens"] += 1
                    yield sse({"choices": [choice(i, None)]})
                    if "CUT" in text:
                        return
                    if "ERRCHUNK" in text:
                        yield "data: " + json.dumps({"error": {"message": "engine failed", "code": 500}}) + "\n\n"
                        return
                yield sse({"choices": [choice(None, finish)]})
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield sse({"choices": [], "usage": usage})
                yield "data: [DONE]\n\n"
            except asyncio.CancelledError:
                stats["cancelled"] += 1
                raise

        return StreamingResponse(gen(), media_type="text/event-stream")

    async def completions(request):
        return await serve(request, chat=False)

    async def chat_completions(request):
        return await serve(request, chat=True)

    app = Starlette(routes=[
        Route("/v1/models", models), Route("/health", health), Route("/metrics", metrics),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ])
    app.state.stats = stats
    return app


@contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0):
    """Run an ASGI ``app`` with uvicorn in a daemon thread (``port=0``: a free port);
    yields its ``http://host:port/v1`` and stops it on exit.

    Raises:
        RuntimeError: the server did not start within 20 s.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    t_end = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > t_end or not th.is_alive():
            server.should_exit = True
            raise RuntimeError(f"server on {host}:{port} did not start")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}/v1"
    finally:
        server.should_exit = True
        th.join(10)


def main(argv: list[str] | None = None) -> int:
    """CLI: serve the instant backend until interrupted."""
    import argparse

    import uvicorn

    ap = argparse.ArgumentParser(description="instant OpenAI-compatible backend (no model)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8100)
    ap.add_argument("--token-delay-ms", type=float, default=0.0)
    a = ap.parse_args(argv)
    uvicorn.run(make_app(a.token_delay_ms / 1e3), host=a.host, port=a.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
