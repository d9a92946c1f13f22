import numpy as np
import pytest

from elis.predictor.base import LengthPredictor, PredictionQuery
from elis.predictor.simple import (
    ConstantPredictor,
    NoisyOraclePredictor,
    OraclePredictor,
    PromptLengthPredictor,
)


def q(rid, total, gen=0, prompt="p"):
    return PredictionQuery(prompt=prompt, num_generated_tokens=gen, request_id=rid,
                           num_output_tokens=total)


def test_oracle_returns_true_remaining():
    p = OraclePredictor()
    assert isinstance(p, LengthPredictor)
    np.testing.assert_array_equal(p.predict_remaining([q("a", 120, 50), q("b", 10)]), [70.0, 10.0])
    assert p.latency.num_calls == 1 and p.latency.num_queries == 2


def test_empty_batch_gives_empty_array():
    out = OraclePredictor().predict_remaining([])
    assert out.shape == (0,) and out.dtype == np.float64


def test_oracle_without_true_length_names_the_field():
    with pytest.raises(ValueError, match="num_output_tokens"):
        OraclePredictor().predict_remaining([PredictionQuery(prompt="x")])


def test_noisy_oracle_is_batch_independent_and_seeded():
    p = NoisyOraclePredictor(sigma=0.5, seed=3)
    alone = p.predict_remaining([q("b", 200, 50)])
    mixed = p.predict_remaining([q("a", 100), q("b", 200, 50), q("c", 7)])
    assert alone[0] == mixed[1]
    assert NoisyOraclePredictor(sigma=0.0, seed=3).predict_remaining([q("b", 200, 50)])[0] == 150.0
    assert NoisyOraclePredictor(sigma=0.5, seed=4).predict_remaining([q("b", 200, 50)])[0] != alone[0]


def test_prompt_length_clips_at_zero():
    p = PromptLengthPredictor(intercept=10.0, slope=1.0)
    out = p.predict_remaining([PredictionQuery(prompt="x", num_prompt_tokens=5, num_generated_tokens=100)])
    assert out[0] == 0.0


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_constant_rejects_bad_value(bad):
    with pytest.raises(ValueError, match="constant.value"):
        ConstantPredictor(bad)


def test_splitmix64_matches_the_reference_sequence():
    from elis.predictor.simple import _splitmix64

    # SplitMix64 seeded with 0: first outputs of the reference implementation (Vigna, prng.di.unimi.it)
    assert _splitmix64(0) == 0xE220A8397B1DCDAF
    assert _splitmix64(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4


def test_noisy_oracle_noise_is_standard_normal_and_independent_across_steps():
    from scipy import stats

    from elis.predictor.simple import noise_key, standard_normal_at

    keys = np.array([noise_key(0, f"req-{i:07d}") for i in range(4000)], dtype=np.uint64)
    g = np.array([0, 50, 100, 150, 200])
    z = standard_normal_at(np.repeat(keys, len(g)), np.tile(g, len(keys))).reshape(len(keys), len(g))
    flat = z.ravel()
    assert abs(flat.mean()) < 4 / np.sqrt(flat.size)  # 4 standard errors
    assert abs(flat.std() - 1.0) < 0.03
    assert stats.kstest(flat, "norm").pvalue > 1e-3
    corr = np.corrcoef(z[:, 0], z[:, 1])[0, 1]
    assert abs(corr) < 4 / np.sqrt(len(keys))


def test_noise_integers_match_the_scalar_reference_and_values_do_not_depend_on_the_batch():
    from elis.predictor.simple import _splitmix64, _splitmix64_np, noise_key, standard_normal_at

    keys = [noise_key(3, f"r{i}") for i in range(300)]
    counters = [50 * (i % 7) + (i % 3) for i in range(300)]
    mixed = _splitmix64_np(np.array(keys, dtype=np.uint64))
    assert [int(v) for v in mixed] == [_splitmix64(k) for k in keys]
    together = standard_normal_at(keys, counters)
    one_by_one = np.array([standard_normal_at([k], [c])[0] for k, c in zip(keys, counters)])
    shifted = standard_normal_at(keys[7:], counters[7:])
    np.testing.assert_array_equal(together, one_by_one)  # the fast path relies on this
    np.testing.assert_array_equal(together[7:], shifted)


def test_noisy_oracle_value_is_the_documented_formula():
    from elis.predictor.simple import noise_key, standard_normal_at

    p = NoisyOraclePredictor(sigma=0.5, seed=7)
    z = standard_normal_at([noise_key(7, "b")], [50])
    assert p.predict_remaining([q("b", 200, 50)])[0] == 150.0 * np.exp(0.5 * z)[0]
    assert standard_normal_at([noise_key(7, "b")], [50])[0] == z[0]  # reproducible
