"""The modality-agnostic transformer: pre-norm blocks on ``scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from carl.config import BackboneConfig


class KVCache:
    """Keys and values of every layer for incremental causal decoding, preallocated to ``max_len``.

    By default each call reads the filled part of the cache, so the attention shapes grow by one
    position per generated token. With ``static=True`` every call reads the whole buffer under a
    mask and the fill level is a device tensor updated in place: a decoding step has the same
    shapes, addresses and no host-side counter from the first token to the last, which is what
    CUDA graphs and ``torch.compile`` need to capture it. Both give the same hidden states.
    """

    def __init__(self, *, depth: int, batch: int, heads: int, head_dim: int, max_len: int, like: torch.Tensor,
                 static: bool = False):
        shape = (depth, batch, heads, max_len, head_dim)
        # zeros, not empty: a masked position gets zero weight, and 0 * NaN from garbage would still be NaN
        self.keys = like.new_zeros(shape)
        self.values = like.new_zeros(shape)
        self.static = static
        self.length: int | torch.Tensor = like.new_zeros((), dtype=torch.long) if static else 0  # positions filled
        self._added = 0  # positions appended by the current call, committed by advance()

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v (B, H, L, D)`` after the filled positions; the keys and values to attend to."""
        self._added = k.shape[2]
        if self.static:
            index = self.length + torch.arange(self._added, device=k.device)
            self.keys[layer].index_copy_(2, index, k)
            self.values[layer].index_copy_(2, index, v)
            return self.keys[layer], self.values[layer]
        end = self.length + self._added
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def mask(self, queries: int, causal: bool, device: torch.device) -> tuple[torch.Tensor | None, bool]:
        """``(attn_mask, is_causal)`` for ``queries`` new positions over the keys :meth:`append` returned:
        each query sees the cache and the new keys up to itself (all new keys if not ``causal``)."""
        if self.static:
            keys = torch.arange(self.max_len, device=device)
            last = self.length + (torch.arange(queries, device=device) if causal else queries - 1)
            return keys <= last.reshape(-1, 1), False  # (L, max_len) or (1, max_len)
        if not causal or queries == 1:
            return None, False
        if self.length == 0:
            return None, True
        return torch.ones(queries, self.length + queries, dtype=torch.bool, device=device).tril(self.length), False

    def advance(self) -> None:
        """Commit the positions appended since the last call (once per backbone pass, after every layer)."""
        if self.static:
            self.length.add_(self._added)
        else:
            self.length += self._added


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
        if cache is not None:
            k, v = cache.append(layer, k, v)
            mask, is_causal = cache.mask(q.shape[2], causal, x.device)
        else:
            mask, is_causal = None, causal and q.shape[2] > 1
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

    def new_cache(self, batch: int, like: torch.Tensor, static: bool = False) -> KVCache:
        """An empty :class:`KVCache` for ``batch`` rows (``static``: fixed shapes, for graph capture)."""
        width, heads = self.config.width, self.config.heads
        return KVCache(
            depth=len(self.blocks), batch=batch, heads=heads, head_dim=width // heads,
            max_len=self.buffer + self.seq_len, like=like, static=static,
        )

    def forward(self, x: torch.Tensor, *, causal: bool, cache: KVCache | None = None) -> torch.Tensor:
        """``x (B, L, C)`` already embedded with positions -> hidden states ``(B, L, C)``."""
        for layer, block in enumerate(self.blocks):
            x = block(x, causal, cache, layer)
        if cache is not None:
            cache.advance()
        return self.norm(x)
