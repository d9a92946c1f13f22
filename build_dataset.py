"""Build a dataset: ``python build_dataset.py data=<source>`` (see conf/build_dataset.yaml)."""

from __future__ import annotations

import hydra

from elis.cli import precheck, prepare_environment, run_entry
from elis.config import register_resolvers

prepare_environment()
register_resolvers()


def task(cfg) -> dict:
    from elis.data.build import format_summary, run

    manifest = run(cfg)
    print(format_summary(manifest))
    return manifest


@hydra.main(config_path="conf", config_name="build_dataset", version_base="1.3")
def main(cfg) -> None:
    run_entry(task, cfg, "build_dataset")


if __name__ == "__main__":
    precheck("build_dataset")
    main()
