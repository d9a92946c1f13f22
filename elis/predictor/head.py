"""MLP regression head on frozen text embeddings.

The ELIS paper (arXiv 2505.09142, §4.1) uses an MLP of 8 hidden layers of width 1024 with
ReLU on the BGE CLS embedding, predicting remaining output tokens. ``MLPHead`` makes depth,
width and dropout configurable and adds two optional inputs (beyond the paper, measured in
the README): a learned generator embedding ("generator conditioning") and a scalar
``log1p(num_generated_tokens)`` feature.
"""

from __future__ import annotations

import torch
from torch import nn


class MLPHead(nn.Module):
    """``[text_emb (B, D) | gen_emb (B, G) | step feature (B, 1)] → (B,)`` regression output.

    Args:
        input_dim: text embedding size D (384 MiniLM, 768 BGE-base, 1024 BGE-large).
        num_hidden_layers: hidden Linear+ReLU layers (paper: 8).
        hidden_dim: their width (paper: 1024).
        dropout: dropout after each hidden ReLU.
        num_generators: size of the generator vocabulary (0 = no conditioning). Index 0 is
            reserved for "unknown generator" and is what held-out generators map to.
        generator_dim: generator embedding size G.
        use_step_feature: append ``log1p(num_generated_tokens) / 10`` as one more input.

    Raises:
        ValueError: for non-positive sizes or dropout outside [0, 1).
    """

    def __init__(
        self,
        input_dim: int,
        num_hidden_layers: int = 8,
        hidden_dim: int = 1024,
        dropout: float = 0.0,
        num_generators: int = 0,
        generator_dim: int = 16,
        use_step_feature: bool = False,
    ) -> None:
        super().__init__()
        if input_dim <= 0 or num_hidden_layers <= 0 or hidden_dim <= 0:
            raise ValueError(
                f"head sizes must be > 0: input_dim={input_dim}, "
                f"num_hidden_layers={num_hidden_layers}, hidden_dim={hidden_dim}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"head.dropout must be in [0, 1), got {dropout!r}")
        self.num_generators = int(num_generators)
        self.use_step_feature = bool(use_step_feature)
        self.generator_embedding = (
            nn.Embedding(num_generators, generator_dim) if num_generators > 0 else None
        )
        width = input_dim + (generator_dim if num_generators > 0 else 0) + int(use_step_feature)
        layers: list[nn.Module] = []
        for _ in range(num_hidden_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden_dim
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(
        self,
        emb: torch.Tensor,
        generator_idx: torch.Tensor | None = None,
        num_generated_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """emb (B, D) float; generator_idx (B,) long; num_generated_tokens (B,) → (B,)."""
        parts = [emb]
        if self.generator_embedding is not None:
            if generator_idx is None:
                generator_idx = torch.zeros(emb.shape[0], dtype=torch.long, device=emb.device)
            parts.append(self.generator_embedding(generator_idx))  # (B, G)
        if self.use_step_feature:
            if num_generated_tokens is None:
                raise ValueError("MLPHead(use_step_feature=True) needs num_generated_tokens")
            parts.append(torch.log1p(num_generated_tokens.to(emb.dtype)).unsqueeze(-1) / 10.0)
        return self.net(torch.cat(parts, dim=-1)).squeeze(-1)
