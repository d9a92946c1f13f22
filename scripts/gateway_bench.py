"""Gateway's own cost with a backend that returns at once (no model): dispatch rate and
per-window overhead. ``PYTHONPATH=. python scripts/gateway_bench.py`` (prints figures).

The worker returns every window's tokens immediately (token 5 repeated), so all measured time is
the gateway: HTTP + JSON, the serving loop (scheduler decision, thread hop, update, listener,
detokenisation) and uvicorn.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serving"))


class InstantWorker:
    def __init__(self, worker_id: int) -> None:
        self.worker_id = worker_id

    def execute(self, batch, start_s):
        from elis.serving.workers.base import WindowResult

        out = []
        for it in batch.items:
            n = it.max_new_tokens
            done = len(it.output_token_ids) + n >= it.max_tokens
            out.append(WindowResult(it.request_id, n, [5] * n, "", done, "length" if done else None,
                                    start_s, start_s, start_s, [start_s] * n))
        return out


def main(num_requests: int = 300, concurrency: int = 16, window_tokens: int = 50) -> None:
    import httpx

    from elis.serving.gateway import GatewayConfig, build_gateway
    from elis.serving.load_balancer import RoundRobin
    from elis.serving.runtime import Runtime, build_schedulers
    from elis.serving.wallclock import LocalWorkerHandle
    from gateway_factories import ServerThread, char_tokenizer

    tok = char_tokenizer()
    scheds = build_schedulers({"policy": "fcfs"}, 1, 4, window_tokens, None, None, None, 100_000)
    rt = Runtime(scheds, RoundRobin(), [LocalWorkerHandle(InstantWorker(0))], None, tok, 100_000)
    gw, app = build_gateway(rt, GatewayConfig("bench", 100_000))
    with ServerThread(app) as s:
        url = s.url + "/v1/completions"

        async def load(n_req: int, max_tokens: int, conc: int) -> float:
            sem = asyncio.Semaphore(conc)
            async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=conc)) as c:
                async def one():
                    async with sem:
                        r = await c.post(url, json={"prompt": "hello", "max_tokens": max_tokens})
                        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == max_tokens
                t0 = time.perf_counter()
                await asyncio.gather(*(one() for _ in range(n_req)))
                return time.perf_counter() - t0

        asyncio.run(load(20, window_tokens, 4))  # warm-up
        t = asyncio.run(load(num_requests, window_tokens, concurrency))
        print(f"dispatch: {num_requests} one-window requests, concurrency {concurrency}: {t:.2f} s, "
              f"{num_requests / t:.1f} req/s (= windows/s)")
        windows = 20
        import statistics

        reps = 25  # interleaved 1-window / 20-window requests; medians (the machine is shared)
        t1s, tws = [], []
        for _ in range(reps):
            t1s.append(asyncio.run(load(1, window_tokens, 1)))
            tws.append(asyncio.run(load(1, window_tokens * windows, 1)))
        t1, tw = statistics.median(t1s), statistics.median(tws)
        q = statistics.quantiles([(b - a) / (windows - 1) for a, b in zip(t1s, tws)], n=4)
        print(f"one request alone (median of {reps}): 1 window {t1 * 1e3:.1f} ms, {windows} windows "
              f"{tw * 1e3:.1f} ms -> {(tw - t1) / (windows - 1) * 1e3:.2f} ms per extra window "
              f"(pairwise quartiles {q[0] * 1e3:.2f} / {q[2] * 1e3:.2f} ms; serving loop, no HTTP)")
    gw.loop.close()


if __name__ == "__main__":
    main()
