"""The modality-agnostic transformer: pre-norm blocks on ``scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from carl.config import BackboneConfig


class KVCache:
    """Keys and values of every layer for incremental causal decoding, preallocated to ``max_len``."""

    def __init__(self, *, depth: int, batch: int, heads: int, head_dim: int, max_len: int, like: torch.Tensor):
        shape = (depth, batch, heads, max_len, head_dim)
        self.keys = like.new_empty(shape)
        self.values = like.new_empty(shape)
        self.length = 0  # positions filled in every layer
        self._pending = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        self._pending = end
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self) -> None:
        self.length = self._pending


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, attn_dropout: float, dropout: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, causal: bool, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(layer, k, v)
        mask, is_causal = None, False
        if causal and q.shape[2] > 1:
            if past == 0:
                is_causal = True
            else:  # new queries see the whole cache and the new keys up to themselves (bottom-right aligned)
                mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=x.device).tril(past)
        dropout = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
        return self.proj_drop(self.proj(rearrange(out, "b h l d -> b l (h d)")))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block (the ViT block of timm, which MAR and EAR use)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float, attn_dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads, attn_dropout, dropout)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = MLP(width, int(width * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor, causal: bool, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), causal, cache, layer)
        return x + self.mlp(self.norm2(x))


class Backbone(nn.Module):
    """A transformer over ``[condition tokens ; token embeddings]``.

    Owns the input projection of tokens (``token_proj``), the learned positions over
    ``buffer + seq_len`` (``pos_embed``), the mask token of bidirectional orders, the
    next-position queries of random orders, the blocks and the final LayerNorm. How the input
    sequence is laid out is the model's business (:mod:`carl.model`).
    """

    def __init__(
        self, config: BackboneConfig, *, token_dim: int, buffer: int, seq_len: int, mask_token: bool, query_next: bool
    ):
        super().__init__()
        self.config = config
        self.buffer, self.seq_len = buffer, seq_len
        width = config.width
        self.token_proj = nn.Linear(token_dim, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, buffer + seq_len, width))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width)) if mask_token else None
        self.query_embed = nn.Parameter(torch.zeros(1, seq_len, width)) if query_next else None
        self.blocks = nn.ModuleList(
            Block(width, config.heads, config.mlp_ratio, config.dropout, config.attn_dropout) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        if config.encoder_depth:  # MAR: the encoder sees the condition and the known tokens only
            if not mask_token:
                raise ValueError("backbone.encoder_depth (MAR's encoder-decoder) needs a bidirectional (masked) order")
            self.encoder_pos_embed = nn.Parameter(torch.zeros(1, buffer + seq_len, width))
            self.token_norm = nn.LayerNorm(width, eps=1e-6)
            self.encoder_blocks = nn.ModuleList(
                Block(width, config.heads, config.mlp_ratio, config.dropout, config.attn_dropout)
                for _ in range(config.encoder_depth)
            )
            self.encoder_norm = nn.LayerNorm(width, eps=1e-6)
            self.decoder_embed = nn.Linear(width, width)
            self.head_pos_embed = nn.Parameter(torch.zeros(1, seq_len, width))  # added before the head
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for name in self.no_weight_decay():
            if getattr(self, name, None) is not None:
                nn.init.normal_(getattr(self, name), std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "mask_token", "query_embed", "encoder_pos_embed", "head_pos_embed"}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """MAR's encoder over ``[condition ; known tokens]`` (already embedded, positions added)."""
        x = self.token_norm(x)
        for block in self.encoder_blocks:
            x = block(x, causal=False)
        return self.encoder_norm(x)

    def new_cache(self, batch: int, like: torch.Tensor) -> KVCache:
        width, heads = self.config.width, self.config.heads
        return KVCache(
            depth=len(self.blocks), batch=batch, heads=heads, head_dim=width // heads,
            max_len=self.buffer + self.seq_len, like=like,
        )

    def forward(self, x: torch.Tensor, *, causal: bool, cache: KVCache | None = None) -> torch.Tensor:
        """``x (B, L, C)`` already embedded with positions -> hidden states ``(B, L, C)``."""
        for layer, block in enumerate(self.blocks):
            x = block(x, causal, cache, layer)
        if cache is not None:
            cache.advance()
        return self.norm(x)
