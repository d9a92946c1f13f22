"""Encoder speed benchmark: ``python -m elis.predictor.bench [--num-texts N] [--ckpt PATH]``.

Embeds N real (prompt, partial answer) texts from ``../shared/data/alpaca_eval`` with the
offline MiniLM encoder in fp32 (``backend=torch``) and dynamic int8 (``backend=int8``), and
prints texts/s, tokens/s, the int8 speed-up and the cosine similarity of int8 to fp32
embeddings. With ``--ckpt`` it also times ``LearnedPredictor.predict_remaining`` on batches
of 64 uncached queries (the latency the scheduler charges). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

import numpy as np

from elis.config import PROJECT_ROOT


def load_texts(num_texts: int, shared: Path) -> tuple[list[str], list[str]]:
    """First answers of the first generator files: (prompt, first 0..300 words of answer)."""
    files = sorted((shared / "alpaca_eval" / "model_outputs").glob("*.jsonl.gz"))
    prompts, responses = [], []
    for f in files:
        with gzip.open(f, "rt") as fh:
            for i, line in enumerate(fh):
                row = json.loads(line)
                words = row["output"].split()
                prompts.append(row["instruction"])
                responses.append(" ".join(words[: 50 * (i % 7)]))
                if len(prompts) >= num_texts:
                    return prompts, responses
    return prompts, responses


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-texts", type=int, default=256)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from elis.predictor.encoder import TextEncoder

    torch.set_num_threads(args.threads)
    shared = Path(os.environ.get("ELIS_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
    prompts, responses = load_texts(args.num_texts, shared)
    if args.ckpt:  # first: an int8 model built earlier in-process slows later fp32 calls
        from elis.predictor.base import PredictionQuery
        from elis.predictor.learned import LearnedPredictor

        pred = LearnedPredictor.from_checkpoint(args.ckpt, cache_dir=None)
        qs = [PredictionQuery(p, r, 50 * (i % 7)) for i, (p, r) in enumerate(zip(prompts, responses))]
        pred.predict_remaining([PredictionQuery("warm-up", "", 0)])
        uncached, cached = [], []
        for s in range(0, len(qs) - 63, 64):
            batch = qs[s : s + 64]
            t = time.perf_counter()
            pred.predict_remaining(batch)  # new texts: encoder + head
            uncached.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            pred.predict_remaining(batch)  # same texts again: cache lookup + head
            cached.append((time.perf_counter() - t) * 1e3)
        print(f"predictor latency, batch 64: uncached mean {np.mean(uncached):.0f} ms "
              f"(min {np.min(uncached):.0f}), cached mean {np.mean(cached):.1f} ms "
              f"(min {np.min(cached):.1f}) over {len(uncached)} batches")
    embs, rates = {}, {}
    for backend in ("torch", "int8"):
        enc = TextEncoder("sentence-transformers/all-MiniLM-L6-v2", pooling="mean",
                          max_length=args.max_length, backend=backend)
        enc.encode(prompts[:32], responses[:32])  # warm-up
        enc.stats = type(enc.stats)()
        embs[backend] = enc.encode(prompts, responses)
        s = enc.stats.as_dict()
        rates[backend] = s["texts_per_s"]
        print(f"{backend:>5}: {s['num_texts']} texts, {s['num_tokens']} tokens in {s['seconds']:.1f} s"
              f" = {s['texts_per_s']:.1f} texts/s, {s['tokens_per_s']:.0f} tokens/s"
              f" (truncated {s['num_truncated']}, max_length {args.max_length})")
    a, b = embs["torch"], embs["int8"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print(f"int8 speed-up: {rates['int8'] / rates['torch']:.2f}x; cosine(int8, fp32): "
          f"mean {cos.mean():.4f}, min {cos.min():.4f}")


if __name__ == "__main__":
    main()
