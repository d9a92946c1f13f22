"""Serve a workload with scheduling policies: ``python run_experiment.py [preset=compare] ...``.

Thin Hydra entry point; the work is in ``elis.experiments.run.run(cfg)``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from elis.config import register_resolvers

register_resolvers()


@hydra.main(config_path="conf", config_name="run_experiment", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from elis.experiments.run import run

    results = run(cfg)
    print(f"run directory: {results.pop('output_dir')}")
    for name, m in results.items():
        print(f"{name:28s} jct_mean_s={m['jct_mean_s']:.3f} jct_p99_s={m['jct_p99_s']:.3f} "
              f"queuing_delay_mean_s={m['queuing_delay_mean_s']:.3f} preemptions={m['num_preemptions']}")


if __name__ == "__main__":
    main()
