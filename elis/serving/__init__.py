"""Serving core: requests, policies, schedulers, load balancing, workers, metrics; the runtime
builder (``runtime``) and its three drivers: simulator, wall-clock runner, HTTP gateway.

Stays light to import: no torch/transformers/vLLM/Ray at import time.
"""
