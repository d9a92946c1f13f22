"""Factories for gateway tests: a character tokenizer, a tiny random Llama, servers on loopback."""

from __future__ import annotations

import threading
import time

SPECIALS = ["<pad>", "<s>", "</s>"]


def char_tokenizer(bos: bool = True):
    """One token per printable ASCII character (+ <pad>=0, <s>=1, </s>=2): token i ↔ char i − 3,
    so character positions and token positions coincide (stop strings at exact boundaries)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + [chr(c) for c in range(32, 127)])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    kw = {"bos_token": "<s>"} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", **kw)


def tiny_llama(vocab_size: int = 98, bos: bool = True, max_positions: int = 512, seed: int = 0):
    """A 2-layer, 32-wide random Llama (deterministic for ``seed``; no download)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                      bos_token_id=1 if bos else None, eos_token_id=2, pad_token_id=0, initializer_range=0.2)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    return LlamaForCausalLM(cfg).eval()


def hf_runtime(model, tok, *, policy="fcfs", mode="windowed", num_workers=1, max_batch_size=2,
               window_tokens=5, predictor=None):
    """A ``Runtime`` of in-process HF workers on ``model`` (the experiments' objects)."""
    from elis.serving.load_balancer import RoundRobin
    from elis.serving.prediction import PredictionService
    from elis.serving.runtime import Runtime, build_schedulers, context_limit
    from elis.serving.wallclock import LocalWorkerHandle
    from elis.serving.workers.hf import HFWindowEngine, HFWorker

    pred = None if predictor is None else PredictionService(predictor, None, latency_source="measured",
                                                            window_tokens=window_tokens)
    handles = [LocalWorkerHandle(HFWorker(w, HFWindowEngine(model, tok))) for w in range(num_workers)]
    limit = context_limit(handles)
    scheds = build_schedulers({"policy": policy, "mode": mode}, num_workers, max_batch_size, window_tokens,
                              None, pred, None, limit)
    return Runtime(scheds, RoundRobin(), handles, pred, tok, limit)


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) in a daemon thread; ``url`` once started."""

    def __init__(self, app) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
