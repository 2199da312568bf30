"""Waves ``(B, 1, length)`` <-> tokens ``(B, length / patch, patch)``."""

from dataclasses import dataclass

import torch

from carl.tokenizers.base import Tokenizer, cell_mask


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

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, self.config.length)  # one item; training refuses data of another shape in one line

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().reshape(len(x), self.num_tokens, self.token_dim)  # (B, 1, length) -> (B, N, D)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.float().reshape(len(tokens), 1, -1)  # (B, N, D) -> (B, 1, length)

    def token_mask(self, known: torch.Tensor) -> torch.Tensor:
        """A token is known when all its ``patch`` steps are: ``(B, 1, length)`` -> ``(B, N)``."""
        return cell_mask(known[:, 0], (self.num_tokens,))
