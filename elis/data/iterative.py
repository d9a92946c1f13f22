"""Iterative samples (ELIS, arXiv 2505.09142 §3): re-predict the remaining length every window.

A response of ``L`` tokens yields one sample per step ``k in 0..K-1`` with ``k*W < L``: the
input is the prompt plus the first ``k*W`` response tokens (decoded, special tokens skipped)
and the target is ``L - k*W`` remaining tokens. L=120, W=50, K=8 → k=0,1,2 → 120, 70, 20.
L=0 → nothing; L=W → one sample (k=0); L > K*W → K samples, the last with L-(K-1)W.

A prefix of k*W byte-level BPE tokens can end inside a multi-byte UTF-8 character; it then
decodes with U+FFFD, exactly what a serving engine would have produced at that point.
"""

from __future__ import annotations


def iterative_steps(num_output_tokens: int, window_tokens: int, num_steps: int) -> list[int]:
    """Steps k (0-based) that have remaining tokens: ``[k for k < num_steps if k*W < L]``.

    Raises:
        ValueError: for ``window_tokens`` < 1, ``num_steps`` < 1 or ``num_output_tokens`` < 0.
    """
    if window_tokens < 1:
        raise ValueError(f"window_tokens must be >= 1, got {window_tokens}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if num_output_tokens < 0:
        raise ValueError(f"num_output_tokens must be >= 0, got {num_output_tokens}")
    n = min(num_steps, -(-num_output_tokens // window_tokens))  # ceil(L / W)
    return list(range(n))


class IterativeExpander:
    """A picklable ``datasets.map(batched=True, remove_columns=...)`` function: pairs → samples.

    Input batch columns: ``sample_id, prompt_id, generator, source, prompt,
    response_token_ids, num_output_tokens, num_prompt_tokens``. Output: the columns of
    ``elis.data.schema.ITERATIVE_COLUMNS``, one row per (pair, step), steps in order.
    """

    def __init__(self, tokenizer, window_tokens: int, num_steps: int) -> None:
        iterative_steps(0, window_tokens, num_steps)  # validate
        self.tokenizer = tokenizer
        self.window_tokens = window_tokens
        self.num_steps = num_steps

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in (
            "sample_id", "prompt_id", "generator", "source", "prompt", "partial_response", "step",
            "num_generated_tokens", "num_output_tokens", "num_remaining_tokens", "num_prompt_tokens")}
        prefixes: list[list[int]] = []
        for i, ids in enumerate(batch["response_token_ids"]):
            length = batch["num_output_tokens"][i]
            for k in iterative_steps(length, self.window_tokens, self.num_steps):
                done = k * self.window_tokens
                prefixes.append(ids[:done])
                for col in ("sample_id", "prompt_id", "generator", "source", "prompt", "num_prompt_tokens"):
                    out[col].append(batch[col][i])
                out["step"].append(k)
                out["num_generated_tokens"].append(done)
                out["num_output_tokens"].append(length)
                out["num_remaining_tokens"].append(length - done)
        out["partial_response"] = self.tokenizer.batch_decode(prefixes, skip_special_tokens=True) if prefixes else []
        return out
