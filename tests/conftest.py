"""Shared fixtures: Hydra config composition and the optional ../shared/data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from elis.config import CONFIG_DIR, PROJECT_ROOT, register_resolvers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

register_resolvers()

SHARED_DATA = Path(os.environ.get("ELIS_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``; the test is skipped cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def compose_cfg(tmp_path):
    """Compose a real entry-point config with overrides; artefacts go under tmp_path.

    Usage: ``cfg = compose_cfg("train", ["predictor=minilm", "debug=tiny"])``.
    """
    from hydra import compose, initialize_config_dir

    def _compose(config_name: str, overrides: list[str] | None = None):
        base = [
            f"paths.data_dir={tmp_path / 'data'}",
            f"paths.models_dir={tmp_path / 'models'}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.output_dir={tmp_path / 'out'}",
        ]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=base + list(overrides or []))

    return _compose
