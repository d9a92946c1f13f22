"""Serve a workload with scheduling policies: ``python run_experiment.py [preset=compare] ...``.

Thin Hydra entry point; the work is in ``elis.experiments.run.run(cfg)``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from elis.cli import precheck, prepare_environment, run_entry
from elis.config import register_resolvers

prepare_environment()
register_resolvers()


def task(cfg: DictConfig) -> dict:
    from elis.cli import UserError
    from elis.experiments.report import no_completion_message, summary_line
    from elis.experiments.run import run

    results = run(cfg)
    print(f"run directory: {results.pop('output_dir')}")
    for name, m in results.items():
        print(summary_line(name, m))
    msg = no_completion_message(results)
    if msg:  # by design: a run whose numbers are all undefined must not look like a success
        raise UserError(msg)
    return results


@hydra.main(config_path="conf", config_name="run_experiment", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_entry(task, cfg, "run_experiment")


if __name__ == "__main__":
    precheck("run_experiment")
    main()
