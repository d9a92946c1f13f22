import numpy as np
import pytest

from elis.rng import make_rng


def test_same_seed_and_stream_give_same_draws():
    assert np.array_equal(make_rng(7, "a").random(5), make_rng(7, "a").random(5))


def test_streams_are_independent():
    assert not np.array_equal(make_rng(7, "a").random(5), make_rng(7, "b").random(5))


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_bad_seed_is_rejected(bad):
    with pytest.raises(ValueError, match="seed"):
        make_rng(bad, "a")
