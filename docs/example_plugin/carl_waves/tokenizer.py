"""Waves ``(B, length)`` <-> tokens ``(B, length / patch, patch)``."""

from dataclasses import dataclass

import torch

from carl.tokenizers.base import Tokenizer


@dataclass(frozen=True)
class WaveTokenizerConfig:
    """The recipe keys of ``tokenizer: {name: waves, ...}``, validated by carl."""

    length: int = 32  # steps per wave
    patch: int = 4  # steps per token

    def __post_init__(self):
        if self.length % self.patch:
            raise ValueError(f"length {self.length} is not a multiple of patch {self.patch}")


class WaveTokenizer(Tokenizer):
    """Cuts a wave into patches of ``patch`` steps: one token per patch. The waves lie in
    [-1.2, 1.2], already about unit scale, so no normalisation is needed."""

    Config = WaveTokenizerConfig

    def __init__(self, config: WaveTokenizerConfig):
        super().__init__()
        self.config = config
        self.num_tokens = config.length // config.patch  # N
        self.token_dim = config.patch  # D

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().reshape(len(x), self.num_tokens, self.token_dim)  # (B, length) -> (B, N, D)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.float().reshape(len(tokens), -1)  # (B, N, D) -> (B, length)
