"""ELIS: LLM serving schedulers that know how long an answer will be.

Reproduces and extends "ELIS: Efficient LLM Iterative Scheduling System with Response
Length Predictor" (arXiv 2505.09142). Sub-packages: ``elis.data`` (dataset pipeline),
``elis.predictor`` (response-length predictor), ``elis.serving`` (scheduler, simulator,
workers) and ``elis.experiments`` (workloads, runs, reports, figures).

Importing ``elis`` or ``elis.serving`` stays light: torch, transformers, vLLM, Ray and W&B
are imported lazily where they are used.
"""

__version__ = "0.1.0"
