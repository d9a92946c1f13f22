"""Re-prediction latency of ``predictor=gbdt`` (a benchmark that prints, never a test).

``python -m elis.predictor.gbdt_bench --model-dir models/gbdt-alpaca_eval [--data-dir data/alpaca_eval]``

Takes test-split iterative rows, warms the prompt cache (each prompt is embedded once, as in
serving), then times ``predict_remaining`` at batch sizes 1, 4 (the paper's batch) and 64 over
``--repeats`` rounds and prints ms per call and per query (median and p90), split into
structural features and the boosters. The encoder is NOT in the timed path: the prompt effect
is computed once per prompt, the partial answer is never re-encoded.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default="models/gbdt-alpaca_eval")
    ap.add_argument("--data-dir", default="data/alpaca_eval")
    ap.add_argument("--cache-dir", default="cache")
    ap.add_argument("--num-queries", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    from elis.data.build import load_dataset_dir
    from elis.predictor.gbdt import GbdtPredictor
    from elis.predictor.gbdt_train import queries_of
    from elis.predictor.structural import structural_features

    pred = GbdtPredictor.from_dir(args.model_dir, cache_dir=args.cache_dir)
    _, it, _ = load_dataset_dir(args.data_dir)
    test = it["test"].shuffle(seed=0).select(range(min(args.num_queries, it["test"].num_rows))).to_pandas()
    queries = queries_of(test)
    pred.predict_remaining(queries)  # warm: prompt embeddings + effects cached
    print(f"gbdt re-prediction latency, {len(queries)} test queries, {args.repeats} repeats")
    print("| batch | ms/call median | ms/call p90 | ms/query median | structural ms/query |")
    print("|---|---|---|---|---|")
    for bs in (1, 4, 64):
        calls, struct = [], []
        for _ in range(args.repeats):
            for s in range(0, len(queries) - bs + 1, bs):
                batch = queries[s: s + bs]
                t = time.perf_counter()
                pred.predict_remaining(batch)
                calls.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            structural_features([q.partial_response for q in queries], [q.prompt for q in queries])
            struct.append((time.perf_counter() - t) * 1e3 / len(queries))
        c = np.asarray(calls)
        print(f"| {bs} | {np.median(c):.3f} | {np.percentile(c, 90):.3f} | {np.median(c) / bs:.3f} "
              f"| {np.median(struct):.3f} |")


if __name__ == "__main__":
    main()
