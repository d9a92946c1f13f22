"""Which ISRTF keys a load-generator run's requests had (why a gateway run did not preempt).

    python scripts/isrtf_keys_check.py RECORDS_PARQUET MODEL_DIR [MAX_TOKENS] [W]

RECORDS_PARQUET: variants/<isrtf>/reps/0/requests.parquet of a loadgen run with
return_token_ids=true; MODEL_DIR: the minilm checkpoint folder the gateway used. The key is the
prediction clipped to max_tokens - generated (elis/serving/policy.py).
"""
import sys

import numpy as np
import pandas as pd
from elis.predictor.learned import LearnedPredictor
from elis.predictor.base import PredictionQuery
d = pd.read_parquet(sys.argv[1])
p = LearnedPredictor.from_checkpoint(sys.argv[2], cache_dir=None)
MAX_TOKENS = int(sys.argv[3]) if len(sys.argv) > 3 else 150
W = int(sys.argv[4]) if len(sys.argv) > 4 else 50
q0 = [PredictionQuery(prompt=r.prompt) for r in d.itertuples()]
pred0 = np.asarray(p.predict_remaining(q0))
print("first prediction (tokens): min %.0f median %.0f max %.0f; share >= max_tokens: %.2f" % (pred0.min(), np.median(pred0), pred0.max(), (pred0 >= MAX_TOKENS).mean()))
# at the first boundary (50 generated): partial text = first 50 tokens of the served answer
rows=[]
for r in d.itertuples():
    ids = list(r.output_token_ids)
    if len(ids) > W:
        rows.append(PredictionQuery(prompt=r.prompt, partial_response=r.output_text[: len(r.output_text) * W // len(ids)], num_generated_tokens=W))
pred1 = np.asarray(p.predict_remaining(rows))
print(f"remaining at {W}:", np.round(pred1).tolist())
key0 = np.minimum(pred0, MAX_TOKENS); key1 = np.minimum(pred1, MAX_TOKENS - W)
print("newcomer keys min(pred, max_tokens): sorted", np.sort(np.round(key0)).tolist())
print(f"incumbent keys at {W}: min(pred, max_tokens - W):", np.sort(np.round(key1)).tolist())
