"""Hydra/OmegaConf glue shared by the entry points and the tests.

``register_resolvers()`` adds ``${project_root:}`` (the folder holding ``conf/``), so paths
in ``conf/paths/default.yaml`` resolve the same under ``@hydra.main`` and under Hydra's
``compose`` API in tests. It is idempotent and has no other side effect.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"


def register_resolvers() -> None:
    """Register ELIS's OmegaConf resolvers once (safe to call repeatedly)."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
