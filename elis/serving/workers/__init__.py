"""Workers: one engine instance each (simulated, transformers, vLLM), local or Ray actors."""
