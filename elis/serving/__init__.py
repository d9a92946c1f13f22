"""Serving core: requests, policies, schedulers, load balancing, workers, metrics.

Stays light to import: no torch/transformers/vLLM/Ray at import time.
"""
