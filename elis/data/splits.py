"""Prompt-level splits: every sample of one prompt lands in one split.

The split of a prompt is a pure function of its text: ``u = sha1(prompt) / 2**160`` (a
uniform number in [0, 1)), then ``train`` if ``u < f_train``, ``val`` if
``u < f_train + f_val``, else ``test``. Adding data never moves an existing prompt, and the
same prompt answered by many generators (AlpacaEval: 117) never leaks across splits.
Whole generators listed in ``holdout_generators`` go to ``test_ood`` instead (their prompts
may also appear, answered by other models, in train: the split tests a new *model*).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping

from elis.data.schema import OOD_SPLIT, SPLITS


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Validate ``{train, val, test}`` fractions (each in [0, 1], sum 1 within 1e-6).

    Raises:
        ValueError: naming the offending key or the sum.
    """
    unknown = [k for k in fractions if k not in SPLITS]
    if unknown:
        raise ValueError(f"split_fractions has unknown split {unknown[0]!r}; valid: {', '.join(SPLITS)}")
    out = {s: float(fractions.get(s, 0.0)) for s in SPLITS}
    for s, f in out.items():
        if not math.isfinite(f) or not 0.0 <= f <= 1.0:
            raise ValueError(f"split_fractions.{s} must be in [0, 1], got {fractions.get(s)!r}")
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split_fractions must sum to 1, got {total} ({out})")
    return out


def prompt_unit_interval(prompt: str) -> float:
    """``sha1(prompt UTF-8) / 2**160`` in [0, 1): the prompt's stable split coordinate."""
    return int.from_bytes(hashlib.sha1(prompt.encode("utf-8")).digest(), "big") / 2.0**160


def split_of_prompt(prompt: str, fractions: Mapping[str, float]) -> str:
    """The split (``train``/``val``/``test``) of a prompt text; ``fractions`` as ``check_fractions``."""
    u = prompt_unit_interval(prompt)
    edge = 0.0
    for s in SPLITS:
        edge += fractions[s]
        if u < edge:
            return s
    return SPLITS[-1]  # u within rounding of 1.0


def assign_splits(
    prompts: Iterable[str],
    generators: Iterable[str],
    fractions: Mapping[str, float],
    holdout_generators: Iterable[str] = (),
) -> list[str]:
    """Split name per row (``train``/``val``/``test``, or ``test_ood`` for held-out generators)."""
    fr = check_fractions(fractions)
    held = set(holdout_generators)
    cache: dict[str, str] = {}
    out = []
    for prompt, gen in zip(prompts, generators, strict=True):
        if gen in held:
            out.append(OOD_SPLIT)
            continue
        s = cache.get(prompt)
        if s is None:
            s = cache[prompt] = split_of_prompt(prompt, fr)
        out.append(s)
    return out
