import pandas as pd, numpy as np
from elis.predictor.learned import LearnedPredictor
from elis.predictor.base import PredictionQuery
d = pd.read_parquet('/work/h-loadgen/outputs/loadgen/fcfs_vs_isrtf_smollm2/variants/isrtf/reps/0/requests.parquet')
p = LearnedPredictor.from_checkpoint('/work/h-loadgen/models/minilm-embedded', cache_dir=None)
q0 = [PredictionQuery(prompt=r.prompt) for r in d.itertuples()]
pred0 = np.asarray(p.predict_remaining(q0))
print("first prediction (tokens): min %.0f median %.0f max %.0f; share >= 150: %.2f" % (pred0.min(), np.median(pred0), pred0.max(), (pred0 >= 150).mean()))
# at the first boundary (50 generated): partial text = first 50 tokens of the served answer
from transformers import AutoTokenizer
rows=[]
for r in d.itertuples():
    ids = list(r.output_token_ids)
    if len(ids) > 50:
        rows.append(PredictionQuery(prompt=r.prompt, partial_response=r.output_text[: len(r.output_text)*50//len(ids)], num_generated_tokens=50))
pred1 = np.asarray(p.predict_remaining(rows))
print("remaining at 50:", np.round(pred1).tolist())
key0 = np.minimum(pred0, 150); key1 = np.minimum(pred1, 100)
print("newcomer keys min(pred,150): sorted", np.sort(np.round(key0)).tolist())
print("incumbent keys at 50 min(pred,100):", np.sort(np.round(key1)).tolist())
