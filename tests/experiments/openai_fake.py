"""A deterministic fake OpenAI-compatible server on loopback, for load-generator tests.

Answer to a prompt of C characters (chat: the last message's content): ``n = min(max_tokens, C)``
chunks ``"t0 ", "t1 ", …`` then a chunk with ``finish_reason`` ('length' if ``n == max_tokens``
else 'stop'), a usage chunk when ``stream_options.include_usage`` and ``data: [DONE]``.
Faults chosen by the prompt: 'FAIL400' → HTTP 400 naming the field; 'CUT' → the stream stops
after one chunk without a finish_reason; 'ERRCHUNK' → an ``{"error": …}`` chunk; 'SLOW' → 0.2 s
per chunk. ``GET /metrics`` exposes ``fake_requests_total``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from contextlib import contextmanager

from fastapi import FastAPI, Request  # module level: FastAPI resolves the (string) annotations here
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse


def make_app(token_delay_s: float = 0.0):
    app = FastAPI()
    state = {"requests": 0}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(f"# TYPE fake_requests counter\nfake_requests_total {state['requests']}\n")

    async def _serve(body: dict, chat: bool):
        state["requests"] += 1
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        if "FAIL400" in prompt:
            return JSONResponse({"error": {"message": "prompt: FAIL400 is not allowed", "param": "prompt"}},
                                status_code=400)
        max_tokens = int(body["max_tokens"])
        n = min(max_tokens, len(prompt))
        delay = 0.2 if "SLOW" in prompt else token_delay_s
        usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(text: str, finish: str | None) -> str:
            choice = ({"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish} if chat
                      else {"index": 0, "text": text, "finish_reason": finish})
            return "data: " + json.dumps({"id": "x", "choices": [choice]}) + "\n\n"

        async def gen():
            for i in range(n):
                if delay:
                    await asyncio.sleep(delay)
                yield chunk(f"t{i} ", None)
                if "CUT" in prompt:
                    return
                if "ERRCHUNK" in prompt:
                    yield "data: " + json.dumps({"error": {"message": "engine failed"}}) + "\n\n"
                    return
            yield chunk("", "length" if n == max_tokens else "stop")
            if usage:
                yield "data: " + json.dumps({"id": "x", "choices": [], "usage": {
                    "prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(req: Request):
        return await _serve(await req.json(), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: Request):
        return await _serve(await req.json(), chat=True)

    return app


@contextmanager
def serve(app):
    """Run ``app`` with uvicorn on 127.0.0.1 (free port) in a thread; yields ``http://…/v1``."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    t_end = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > t_end or not th.is_alive():
            raise RuntimeError("fake OpenAI server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        th.join(10)
