"""The generation loops of :class:`carl.model.ContinuousAR`, one per attention kind.

- **bidirectional** (masked orders, MAR/EAR): at each step the backbone sees the known tokens
  and mask tokens everywhere else; the positions the schedule opens next are drawn from the
  scoring rule at once. Gathers and scatters of fixed-size indices: no host-device sync.
- **causal** (causal and random orders): one token per step from a KV cache; a prompt (the first
  K positions) is read in the same pass as the condition.

Under classifier-free guidance the condition batch holds conditional rows first and unconditional
rows after them; :func:`sample_step` hands both halves to the scoring rule, which mixes them.
"""

import torch

from carl.orders.base import gather_rows, sorted_positions
from carl.scores.base import Guidance, guidance_scale


def sample_step(model, hidden, known_after, *, cfg, cfg_schedule, temperature, generator) -> torch.Tensor:
    """One scoring-rule draw per conditional row; the second half of ``hidden`` is unconditional under CFG."""
    guidance = None
    if cfg != 1.0:
        hidden, uncond = hidden.chunk(2, dim=0)
        guidance = Guidance(uncond=uncond, scale=guidance_scale(cfg, cfg_schedule, known_after, model.tokenizer.num_tokens))
    return model.score.sample(hidden, temperature=temperature, guidance=guidance, generator=generator)


def generate_bidirectional(model, cond, order, steps, tokens=None, known_before: int = 0, **sampler) -> torch.Tensor:
    """Tokens ``(B, N, D)``: at each step, the positions ``order`` writes next, drawn together from
    the hidden states of the known tokens and mask tokens; ``steps`` yields the count known after
    each step. ``tokens`` with ``known_before`` > 0: the first ``known_before`` positions of
    ``order`` are given there (completion) and kept as they are."""
    batch, n, d = order.shape[0], model.tokenizer.num_tokens, model.tokenizer.token_dim
    rows = cond.shape[0] // batch  # 2 under CFG
    ranks = order.argsort(dim=-1)  # (B, N): step index at which each position is written
    tokens = cond.new_zeros(batch, n, d, dtype=torch.float32) if tokens is None else tokens.float().clone()
    for known_after in steps:  # gathers and scatters of fixed-size indices: no host-device sync
        known = (ranks < known_before).repeat(rows, 1)
        known_index = sorted_positions(order, 0, known_before).repeat(rows, 1)  # (rows * B, K)
        hidden = model.hidden_bidirectional(tokens.repeat(rows, 1, 1), cond, known, known_index)
        new = sorted_positions(order, known_before, known_after)  # (B, k), the same count per row
        picked = gather_rows(hidden, new.repeat(rows, 1)).flatten(0, 1)  # (rows * B * k, C), conditional rows first
        drawn = sample_step(model, picked, known_after, **sampler).view(batch, -1, d)
        tokens.scatter_(1, new[..., None].expand_as(drawn), drawn)
        known_before = known_after
    return tokens


def generate_causal(model, cond, order, steps, prompt=None, static=False, **sampler) -> torch.Tensor:
    """Tokens ``(B, N, D)``, one per step in ``order`` from a KV cache (``static``: fixed shapes);
    ``steps`` yields the count known after each step. ``prompt (B, K, D)`` gives the first K
    positions of ``order``, read in one pass with the condition; ``steps`` then starts at K + 1."""
    batch, n, d = order.shape[0], model.tokenizer.num_tokens, model.tokenizer.token_dim
    rows = cond.shape[0] // batch
    order_rows = order.repeat(rows, 1)
    cache = model.backbone.new_cache(cond.shape[0], like=cond, static=static)
    x = model.causal_prefix(cond, order_rows[:, 0])
    ordered = cond.new_zeros(batch, n, d, dtype=torch.float32)
    given = 0 if prompt is None else prompt.shape[1]
    if given:  # the prompt goes through in the same pass as the condition
        ordered[:, :given] = prompt.to(ordered)
        tokens = ordered[:, :given].repeat(rows, 1, 1)
        x = torch.cat([x, model.causal_inputs(tokens, order_rows[:, :given], order_rows[:, 1 : given + 1])], dim=1)
    hidden = model.backbone(x, causal=True, cache=cache)[:, -1].contiguous()  # the strides of every later step
    for known_after in steps:
        i = known_after - 1  # the position in the order this step writes
        ordered[:, i] = sample_step(model, hidden, known_after, **sampler)
        if i + 1 < n:
            token = ordered[:, i : i + 1].repeat(rows, 1, 1)
            x = model.causal_inputs(token, order_rows[:, i : i + 1], order_rows[:, i + 1 : i + 2])
            hidden = model.backbone(x, causal=True, cache=cache)[:, -1]
    tokens = torch.empty_like(ordered)
    tokens.scatter_(1, order[..., None].expand_as(ordered), ordered)
    return tokens


def static_by_default(device: torch.device) -> bool:
    """Whether causal decoding uses the fixed-shape KV cache when not told: on CUDA, where
    compiled steps and CUDA graphs need it; a CPU runs the growing cache faster."""
    return device.type == "cuda"
