"""Fixtures for the dataset pipeline tests: a tiny word-level label tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_factories import WORDS


@pytest.fixture(scope="session")
def word_tokenizer_dir(tmp_path_factory) -> Path:
    """A saved ``PreTrainedTokenizerFast``: whitespace split, one id per word of WORDS,
    ``[UNK]``=0 and ``[EOS]``=1 special tokens; decoding joins words with one space. Its
    normalizer deletes zero-width spaces (U+200B), so a response of only those is non-empty
    text with 0 tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[EOS]": 1} | {w: i + 2 for i, w in enumerate(dict.fromkeys(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Replace("\u200b", "")
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]")
    folder = tmp_path_factory.mktemp("word_tokenizer")
    fast.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def word_tokenizer(word_tokenizer_dir):
    """The loaded ``LabelTokenizer`` of ``word_tokenizer_dir``."""
    from elis.data.lengths import load_label_tokenizer

    return load_label_tokenizer(str(word_tokenizer_dir))
