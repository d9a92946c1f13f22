"""The dataset's columns: the contract between ``build_dataset.py`` and its consumers.

A built dataset lives in ``data/<name>/`` (``conf/paths``) as::

    data/<name>/
      pairs/        datasets.DatasetDict, one row per (prompt, generator) answer: PAIR_COLUMNS
      iterative/    datasets.DatasetDict, one row per (pair, step k): ITERATIVE_COLUMNS
      manifest.json counts per split/step/generator, length statistics, drops, provenance

Splits: ``train``, ``val``, ``test`` (by a stable hash of the prompt text, so every sample of
one prompt lands in one split) and, when ``data.holdout_generators`` is set, ``test_ood``.

Iterative samples follow the ELIS paper (arXiv 2505.09142, §3): with window ``W`` (default
50) and ``K`` steps (default 8), a response of ``L`` tokens yields, for every
``k in 0..K-1`` with ``k*W < L``, the input (prompt, first ``k*W`` response tokens decoded)
and the target ``L - k*W`` remaining tokens. Example: L=120, W=50 → targets 120, 70, 20.
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS: tuple[str, ...] = ("train", "val", "test")
OOD_SPLIT = "test_ood"

# One row per (prompt, generator) answer.
PAIR_COLUMNS: dict[str, str] = {
    "sample_id": "string: f'{source}/{prompt_id}/{generator}', unique in the dataset",
    "prompt_id": "string: stable id of the prompt within its source",
    "prompt": "string: the user prompt (non-empty)",
    "response": "string: the generator's answer (non-empty)",
    "generator": "string: the model that wrote the answer",
    "source": "string: loader name, e.g. 'alpaca_eval'",
    "num_prompt_tokens": "int64: prompt tokens under the label tokenizer, no special tokens",
    "num_output_tokens": "int64: response tokens under the label tokenizer, no special tokens",
}

# One row per (pair, step).
ITERATIVE_COLUMNS: dict[str, str] = {
    "sample_id": "string: the pair's sample_id",
    "prompt_id": "string",
    "generator": "string",
    "source": "string",
    "prompt": "string: the prompt",
    "partial_response": "string: the first num_generated_tokens response tokens, decoded ('' at step 0)",
    "step": "int64: k, the number of windows already generated",
    "num_generated_tokens": "int64: k*W",
    "num_output_tokens": "int64: L, the response's total tokens",
    "num_remaining_tokens": "int64: L - k*W (> 0): the regression target",
    "num_prompt_tokens": "int64",
}

# Separator between prompt and partial response when one text is needed
# (the predictor's encoder input; documented in elis.predictor.encoder).
PROMPT_RESPONSE_SEPARATOR = "\n\n### Response so far:\n"


@dataclass(slots=True, frozen=True)
class RawPair:
    """What a source loader yields: one prompt answered by one generator.

    Loaders validate types and report bad rows (see ``elis.data.sources``); token counts
    are added later by the label tokenizer, unless the source knows what the model served:
    ``served_token_ids`` (the generated ids, EOS excluded; they become the label and the
    prefixes of the iterative samples) or only ``num_served_tokens`` (the generator's own
    count; it becomes the label). Re-encoding decoded text can differ from what was served
    (SmolLM2 serves "\n\n" as one token that re-encodes as two).
    """

    prompt_id: str
    prompt: str
    response: str
    generator: str
    source: str
    served_token_ids: tuple[int, ...] | None = None
    num_served_tokens: int | None = None
