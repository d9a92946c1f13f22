"""Workers: one engine instance each (simulated, transformers, remote OpenAI-compatible servers), local or Ray actors."""
