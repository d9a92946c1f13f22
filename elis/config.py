"""Hydra/OmegaConf glue shared by the entry points and the tests.

``register_resolvers()`` adds ``${project_root:}`` (the folder holding ``conf/``), so paths
in ``conf/paths/default.yaml`` resolve the same under ``@hydra.main`` and under Hydra's
``compose`` API in tests, and ``${run_uid:}``: 6 random hex digits drawn once per process
(cached), appended to run folder names (``conf/hydra/default.yaml``) so two runs started in
the same millisecond never share a folder. It is idempotent and has no other side effect.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"


def register_resolvers() -> None:
    """Register ELIS's OmegaConf resolvers once (safe to call repeatedly)."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("run_uid"):
        OmegaConf.register_new_resolver("run_uid", lambda: os.urandom(3).hex(), use_cache=True)
