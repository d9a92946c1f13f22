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


def data_overrides(data_name: str, overrides: list[str] | None = None,
                   data_choice: str | None = None) -> str:
    """The ``data=…`` command-line arguments that select the current dataset, for hints.

    A dataset's folder name (``data.name``) is not always a config option: ``data=jsonl
    data.name=mine`` builds ``data/mine/``, and ``python build_dataset.py data=mine`` would fail.
    This returns the data group choice plus every ``data.*`` override of the running Hydra app
    (shell-quoted), e.g. ``"data=jsonl data.source.paths=my.jsonl data.name=mine"``; outside a
    Hydra app (``overrides`` and ``data_choice`` None and no ``HydraConfig``) just
    ``data=<data_name>``.

    Args:
        data_name: ``cfg.data.name`` (the dataset folder's name).
        overrides: the task overrides (default: ``HydraConfig.get().overrides.task``).
        data_choice: the ``data`` group option (default: ``HydraConfig``'s runtime choice).
    """
    import shlex

    if overrides is None or data_choice is None:
        try:
            from hydra.core.hydra_config import HydraConfig

            hc = HydraConfig.get()
            overrides = list(hc.overrides.task) if overrides is None else overrides
            data_choice = hc.runtime.choices.get("data") if data_choice is None else data_choice
        except (ImportError, ValueError):
            pass
    if not data_choice:
        return f"data={data_name}"
    extra = [o for o in (overrides or []) if o.lstrip("+").startswith("data.")]
    return " ".join([f"data={data_choice}"] + [shlex.quote(o) for o in extra])
