"""Workload measurements quoted in the README (Results, data and workload fixes; issue 11 items 5, 6, 8)."""
import numpy as np, pandas as pd
from elis.experiments.workload import gamma_arrivals, fit_gamma, spread_ties, read_trace
from elis.rng import make_rng
rng = np.random.default_rng(0)
print("item 5: fraction of exact-zero float64 Gamma gaps (100k draws, rate 2)")
for cv in [3, 5, 10, 20, 31.6, 100, 31623]:
    g = rng.gamma(1 / cv**2, cv**2 / 2.0, 100_000)
    print(f"  cv={cv:>7}: zero gaps {np.mean(g == 0):.4%}, realised mean gap x rate {g.mean() * 2:.3f}")
print("item 6: 1000 Poisson arrivals, mean gap 1.372 s, floored to whole seconds")
t = gamma_arrivals(1000, 1 / 1.372, 1.0, make_rng(0, "coarse"))
g = np.diff(np.floor(t)); tg = np.diff(t)
old_half = np.where(g == 0, 0.5, g)
print(f"  ties {np.mean(g == 0):.1%}; true gaps mean {tg.mean():.4f} s cv {tg.std() / tg.mean():.3f}")
print(f"  old rule (zero gap -> r/2 = 0.5 s): mean {old_half.mean():.4f} s ({old_half.mean() / tg.mean() - 1:+.1%})")
print(f"  old rule at r = 1e-7 (MLE): cv {fit_gamma(g, 1e-7, method='mle').cv:.3f}")
f = fit_gamma(g)
s = spread_ties(g, 1.0)
print(f"  new (ties spread, {f.method}, r={f.resolution_s:g} inferred): mean {1 / f.rate_rps:.4f} s ({1 / f.rate_rps / tg.mean() - 1:+.2%}), cv {f.cv:.3f} (spread trace cv {s.std() / s.mean():.3f})")
print("item 8: Azure conv trace shuffled, first N requests")
src = "../shared/data/traces/azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv"
df = pd.read_csv(src)
df.sample(frac=1.0, random_state=0).to_csv("/tmp/dataw/conv_shuffled.csv", index=False)
for n in (200, 1000):
    a = read_trace(src, max_rows=n).arrival_time_s
    b = read_trace("/tmp/dataw/conv_shuffled.csv", max_rows=n).arrival_time_s
    # old behaviour: first n FILE rows, then sorted
    ts = np.sort(pd.to_datetime(pd.read_csv("/tmp/dataw/conv_shuffled.csv", nrows=n)["TIMESTAMP"], format="ISO8601").to_numpy().astype("int64")) / 1e9
    print(f"  N={n}: sorted file {(n - 1) / (a[-1] - a[0]):.3f} req/s; shuffled file new {(n - 1) / (b[-1] - b[0]):.3f} req/s; old rule {(n - 1) / (ts[-1] - ts[0]):.3f} req/s")
