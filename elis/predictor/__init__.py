"""Response-length predictors: frozen text encoder + MLP head, baselines and oracles."""
