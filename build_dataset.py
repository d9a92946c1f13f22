"""Build a dataset: ``python build_dataset.py data=<source>`` (see conf/build_dataset.yaml)."""

from __future__ import annotations

import hydra

from elis.config import register_resolvers

register_resolvers()


@hydra.main(config_path="conf", config_name="build_dataset", version_base="1.3")
def main(cfg) -> None:
    from elis.data.build import format_summary, run

    print(format_summary(run(cfg)))


if __name__ == "__main__":
    main()
