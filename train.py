"""Train (or evaluate) the response-length predictor: ``python train.py predictor=minilm``.

See ``elis/predictor/train.py`` for what it does and ``conf/train.yaml`` for the options.
"""

import hydra

from elis.config import register_resolvers

register_resolvers()


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg) -> dict:
    from elis.predictor.train import run

    return run(cfg)


if __name__ == "__main__":
    main()
