"""Serve an OpenAI-compatible API over the ELIS scheduler: ``python serve.py [worker=remote ...]``.

Thin Hydra entry point; the work is in ``elis.serving.gateway.serve(cfg)``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from elis.config import register_resolvers

register_resolvers()


@hydra.main(config_path="conf", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from elis.serving.gateway import serve

    serve(cfg)


if __name__ == "__main__":
    main()
