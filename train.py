"""Train (or evaluate) the response-length predictor: ``python train.py predictor=minilm``.

See ``elis/predictor/train.py`` for what it does and ``conf/train.yaml`` for the options.
"""

from __future__ import annotations

import hydra

from elis.cli import precheck, prepare_environment, run_entry
from elis.config import register_resolvers

prepare_environment()
register_resolvers()


def task(cfg) -> dict:
    from elis.predictor.train import format_metrics, run

    metrics = run(cfg)
    print(format_metrics(metrics))
    return metrics


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg) -> None:
    run_entry(task, cfg, "train")


if __name__ == "__main__":
    precheck("train")
    main()
