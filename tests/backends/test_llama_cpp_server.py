"""A third-party server behind the gateway: llama-cpp-python's OpenAI server serving the shipped
SmolLM2 GGUF, in front of it ``serve.py worker=remote worker.resume=text`` (slow).

Skips cleanly unless llama-cpp-python[server] is built. Build it portable, in its own venv
(~10-40 min on 2 shared cores; a CPU-native build crashed in libggml-cpu on the first request):

    python3 -m venv .venv-llama
    CMAKE_ARGS="-DGGML_NATIVE=OFF" nice -n 19 .venv-llama/bin/pip install "llama-cpp-python[server]==0.3.36"

``ELIS_LLAMA_PYTHON`` overrides the interpreter (default ``<repo>/.venv-llama/bin/python``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from elis.config import PROJECT_ROOT

pytestmark = pytest.mark.slow


def _llama_python() -> Path:
    py = Path(os.environ.get("ELIS_LLAMA_PYTHON", PROJECT_ROOT / ".venv-llama" / "bin" / "python"))
    if not py.exists():
        pytest.skip(f"llama-cpp-python venv absent ({py}); build command in this module's docstring")
    if subprocess.run([str(py), "-c", "import llama_cpp.server"], capture_output=True).returncode != 0:
        pytest.skip(f"{py} cannot import llama_cpp.server (build llama-cpp-python[server])")
    return py


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not up after {timeout_s} s:\n{log.read_text()[-3000:]}")


def _start(cmd: list[str], url: str, timeout_s: float, log: Path, env=None) -> subprocess.Popen:
    f = log.open("w")
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT)
    try:
        _wait(url, proc, timeout_s, log)
    except Exception:
        proc.kill()
        raise
    return proc


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(llama.cpp base URL, gateway base URL), both ending in /v1."""
    from elis.serving.workers.hf import SMOLLM2_GGUF_FILE, SMOLLM2_GGUF_PACKAGE, gguf_path

    py = _llama_python()
    logs = tmp_path_factory.mktemp("logs")
    lport, gport = _free_port(), _free_port()
    llama = _start([str(py), "-m", "llama_cpp.server", "--model", str(gguf_path(SMOLLM2_GGUF_PACKAGE, SMOLLM2_GGUF_FILE)),
                    "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(lport), "--n_ctx", "2048",
                    "--n_threads", "1", "--seed", "0"],
                   f"http://127.0.0.1:{lport}/v1/models", 120, logs / "llama.log")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        gw = _start([sys.executable, "serve.py", "worker=remote", f"worker.urls=[http://127.0.0.1:{lport}]",
                     "worker.resume=text", "worker.model_name=smollm2", f"port={gport}", "log_level=warning",
                     "window_tokens=50", "max_batch_size=4"],
                    f"http://127.0.0.1:{gport}/health", 600, logs / "gateway.log", env=env)
    except Exception:
        llama.kill()
        raise
    yield f"http://127.0.0.1:{lport}/v1", f"http://127.0.0.1:{gport}/v1"
    for p in (gw, llama):
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


PROMPT = "Write a long story about a dragon who learns to paint. Describe every colour."


def test_text_resume_streams_exact_token_counts(servers):
    from elis.experiments import loadgen as lg

    llama, gateway = servers
    req = lg.LoadRequest("story", 0.0, PROMPT, 0, 0, seed=0)
    opts = lg.ReplayOptions(api="completions", max_tokens=120, sampling={"temperature": 0.0})
    g, _ = asyncio.run(lg.replay(lg.Endpoint("gw", gateway), [req], opts))
    d, _ = asyncio.run(lg.replay(lg.Endpoint("llama", llama, model="smollm2"), [req], opts))
    g, d = g.iloc[0], d.iloc[0]
    assert g["status"] == "FINISHED" and d["status"] == "FINISHED", (g["fail_reason"], d["fail_reason"])
    # 120 tokens over 3 windows (50 + 50 + 20), counted by the server's usage in every window
    assert (g["finish_reason"], g["num_output_tokens"], g["num_output_tokens_source"]) == ("length", 120, "usage")
    assert d["num_output_tokens"] == 120
    # the first window is one greedy call on the same prompt text: the streams agree on it
    common = os.path.commonprefix([g["output_text"], d["output_text"]])
    print(f"\ngateway/text-resume vs llama.cpp one-shot: common prefix {len(common)} of "
          f"{len(g['output_text'])}/{len(d['output_text'])} chars; identical: {g['output_text'] == d['output_text']}")
    assert len(common) >= 100, (g["output_text"], d["output_text"])


def test_concurrent_chat_requests_through_the_gateway(servers):
    from elis.experiments import loadgen as lg

    _, gateway = servers
    prompts = ["What is the capital of France?", "List three colours.", PROMPT, "Explain rain to a child."]
    reqs = [lg.LoadRequest(f"r{i}", 0.1 * i, p, 0, 0, seed=i) for i, p in enumerate(prompts)]
    opts = lg.ReplayOptions(api="chat", max_tokens=80, sampling={"temperature": 0.0})
    df, info = asyncio.run(lg.replay(lg.Endpoint("gw", gateway), reqs, opts, scrape_metrics=True))
    assert (df["status"] == "FINISHED").all(), df["fail_reason"].tolist()
    for _, r in df.iterrows():
        assert (r["num_output_tokens"] == 80) == (r["finish_reason"] == "length") and 0 < r["num_output_tokens"] <= 80
    # one usage record per request; the gateway's own token counter agrees with their sum
    delta = info["server_metrics_delta"]
    assert lg.server_count(delta, "generation_tokens_total") == int(df["num_output_tokens"].sum())
