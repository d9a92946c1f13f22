"""Serve an OpenAI-compatible API over the ELIS scheduler: ``python serve.py [worker=remote ...]``.

Thin Hydra entry point; the work is in ``elis.serving.gateway.serve(cfg)`` (see
``conf/serve.yaml`` for the options and ``elis/serving/gateway.py`` for the API).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from elis.cli import precheck, prepare_environment, run_entry
from elis.config import register_resolvers

prepare_environment()
register_resolvers()


def task(cfg: DictConfig) -> None:
    from elis.serving.gateway import serve

    serve(cfg)


@hydra.main(config_path="conf", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_entry(task, cfg, "serve")


if __name__ == "__main__":
    precheck("serve")
    main()
