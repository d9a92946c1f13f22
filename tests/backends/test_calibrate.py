"""Calibration: the least-squares fit, the profile rewrite, the measurement loops."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from elis.config import CONFIG_DIR
from elis.serving.calibrate import FIT_KEYS, fit, measure_decode, measure_prefill, write_profile
from elis.serving.workers.hf import HFWindowEngine


def test_fit_recovers_exact_coefficients():
    prefill = [{"num_tokens": n, "prefill_time_s": 0.01 + 0.002 * n} for n in (32, 64, 128, 512)]
    decode = [{"batch": b, "num_context_tokens": c, "decode_step_time_s": 0.03 + 0.004 * b + 1e-5 * c}
              for b, c in ((1, 64), (2, 512), (4, 256), (8, 2048), (16, 1024))]
    f = fit(prefill, decode)
    want = {"prefill_base_s": 0.01, "prefill_per_token_s": 0.002, "decode_base_s": 0.03,
            "decode_per_seq_s": 0.004, "decode_per_context_token_s": 1e-5}
    for k, v in want.items():
        assert f[k] == pytest.approx(v, rel=1e-9, abs=1e-12)
    assert f["prefill_r2"] == pytest.approx(1.0) and f["decode_mean_abs_rel_err"] < 1e-9


def test_fit_is_non_negative():
    # decode time falling with context would need a negative slope: nnls clamps it to 0
    decode = [{"batch": 1, "num_context_tokens": c, "decode_step_time_s": 0.05 - 1e-6 * c} for c in (10, 100, 1000)]
    prefill = [{"num_tokens": n, "prefill_time_s": 0.001 * n} for n in (10, 20)]
    f = fit(prefill, decode)
    assert min(f[k] for k in FIT_KEYS) >= 0.0 and f["decode_per_context_token_s"] == 0.0


def test_write_profile_keeps_keys_and_loads(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = tmp_path / "p.yaml"
    shutil.copy(CONFIG_DIR / "cost_model" / "cpu_smollm2_135m.yaml", path)
    before = OmegaConf.load(path)
    coeffs = dict(zip(FIT_KEYS, (0.011, 0.0021, 0.031, 0.0041, 1.1e-5)))
    write_profile(path, coeffs, "test note\nsecond line")
    after = OmegaConf.load(path)
    assert set(after.keys()) == set(before.keys())
    for k in FIT_KEYS:
        assert after[k] == pytest.approx(coeffs[k])
    for k in set(before.keys()) - set(FIT_KEYS):
        assert after[k] == before[k]
    assert path.read_text().startswith("# Calibrated: test note\n# Calibrated: second line\n")
    cm = instantiate(after)
    assert cm.decode_step_time_s(2, 100) == pytest.approx(0.031 + 2 * 0.0041 + 100 * 1.1e-5)
    with pytest.raises(KeyError, match="prefill_base_s"):
        path.write_text("name: x\n")
        write_profile(path, coeffs, "n")


def test_measurements_on_tiny_model(tiny_llama):
    eng = HFWindowEngine(tiny_llama, eos_token_ids=[-1])
    p = measure_prefill(eng, [(1, 8), (2, 16)], repeats=2)
    assert [(r["batch"], r["num_tokens"]) for r in p] == [(1, 8), (2, 32)]
    assert all(r["prefill_time_s"] > 0 and len(r["all_s"]) == 2 for r in p)
    d = measure_decode(eng, [(2, 10)], steps=4)
    # steps 1..3 of a batch of 2 with 10-token prompts: context 2*(10+1..3)
    assert d[0]["num_context_tokens"] == np.mean([22, 24, 26]) and len(d[0]["all_s"]) == 3
    assert eng.num_kv_tokens == 0


def test_fidelity_errors_by_hand(tmp_path):
    import pandas as pd

    from elis.serving.calibrate import fidelity

    for d, jct in (("real", [10.0, 20.0, 40.0]), ("sim", [11.0, 18.0, 40.0])):
        (tmp_path / d / "variants" / "fcfs").mkdir(parents=True)
        pd.DataFrame({"request_id": ["a", "b", "c"], "jct_s": jct, "num_output_tokens": [5, 6, 7]}).to_parquet(
            tmp_path / d / "variants" / "fcfs" / "requests.parquet")
    f = fidelity(tmp_path / "real", tmp_path / "sim")["fcfs"]
    assert f["jct_mean_s_real"] == pytest.approx(70 / 3) and f["jct_mean_s_sim"] == pytest.approx(23.0)
    assert f["jct_mean_rel_err"] == pytest.approx(abs(23.0 - 70 / 3) / (70 / 3))
    assert f["jct_per_request_abs_rel_err_mean"] == pytest.approx((0.1 + 0.1 + 0.0) / 3)
    assert f["num_same_output_length"] == 3
