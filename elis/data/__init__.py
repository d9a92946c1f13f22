"""Dataset pipeline: sources → token counts → iterative samples → prompt-level splits."""
