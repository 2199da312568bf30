"""Completion: generate the unknown tokens of partly known sequences, consistent with the known ones.

Every order completes in its own way (the order says which, :meth:`Order.completion_order`):

- **masked** (MAR): the known tokens are visible from the first step; the unknown ones are drawn
  in a random order over the steps of the order's schedule (MaskGIT's cosine over the unknown count);
- **random** (sigma-GPT, RAR): the known tokens are read first, in one pass, as a prompt in their
  positions; the unknown ones follow in a random order, one per step;
- **causal**: only a prefix (the first tokens in raster order) can be known; anything else is
  refused in one line, since a causal model cannot see past the token it predicts.

Rows that know as many tokens are completed together (fixed shapes inside); rows with other
counts go in groups of their own. Known tokens are returned exactly as given.
"""

import torch

from carl.model import generation
from carl.orders.base import gather_rows
from carl.progress import bar


def complete_tokens(model, tokens: torch.Tensor, known: torch.Tensor, condition: torch.Tensor | None, *,
                    num_steps: int, progress: bool = False, static: bool = False, **sampler) -> torch.Tensor:
    """Tokens ``(B, N, D)`` with the positions not ``known (B, N)`` generated; the known ones unchanged.

    Args:
        model: a :class:`carl.model.ContinuousAR` in eval mode.
        tokens: ``(B, N, D)``; the values at unknown positions are ignored.
        known: ``(B, N)`` bool, True where ``tokens`` is given.
        condition: one condition per row, or None.
        num_steps: generation steps of a masked order (over the unknown tokens).
        sampler: ``cfg``, ``cfg_schedule``, ``temperature``, ``generator`` (see ``generate``).
    """
    if known.shape != tokens.shape[:2]:
        raise ValueError(f"known has shape {tuple(known.shape)}, but the tokens {tuple(tokens.shape)} need {tuple(tokens.shape[:2])}")
    known = known.to(tokens.device)
    counts = known.sum(1)
    completed = tokens.float().clone()
    for count in counts.unique().tolist():  # one group per count of known tokens, not one per row
        rows = (counts == count).nonzero().squeeze(1)
        group_condition = None if condition is None else condition.to(tokens.device)[rows]
        completed[rows] = _complete_group(model, tokens[rows], known[rows], group_condition, int(count), num_steps=num_steps,
                                          progress=progress, static=static, **sampler)
    return completed


def _complete_group(model, tokens, known, condition, num_known: int, *, num_steps, progress, static, cfg, **sampler):
    batch, n = known.shape
    if num_known == n:
        return tokens.float()
    order = model.order.completion_order(known, sampler.get("generator"))  # the known positions first
    cond = model.conditioner(condition, batch)
    if cfg != 1.0:  # conditional rows first, unconditional rows after them
        cond = torch.cat([cond, model.conditioner(None, batch)], dim=0)
    schedule = [num_known + count for count in model.order.schedule(n - num_known, num_steps)]
    steps = bar(schedule, desc="completing", leave=False, progress=progress)
    if model.order.attention == "bidirectional":
        return generation.generate_bidirectional(model, cond, order, steps, tokens=tokens, known_before=num_known,
                                                 cfg=cfg, **sampler)
    prompt = gather_rows(tokens.float(), order[:, :num_known])  # the known tokens, in the order they are read
    return generation.generate_causal(model, cond, order, steps, prompt=prompt, static=static, cfg=cfg, **sampler)
