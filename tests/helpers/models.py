"""Helpers of the model tests: a tiny model with every embedding counting, weights moved off their
initialisation, and the KV-cache check shared with the GPU suite."""

from __future__ import annotations

import torch

from carl.model import ContinuousAR, generation

from helpers import tiny_model_config

TOL = dict(rtol=1e-5, atol=1e-5)


def model_for(order, **backbone):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config(order, **backbone)).eval()
    with torch.no_grad():  # positions and queries start at zero in some inits: make every one count
        for name, p in model.backbone.named_parameters():
            if "embed" in name or "mask_token" in name:
                p.normal_(0, 0.5)
    return model


def randomized(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Weights moved off their initialisation: the heads start as the constant 0, which would make
    any two samplers agree trivially."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def check_kv_cache_sampling(order: str, device: torch.device, dtype: torch.dtype = torch.float32, tol: float = 1e-5,
                            static_shapes: bool | None = None):
    """Generation with the KV cache (growing or fixed-shape) against recomputing the whole prefix
    at every step, with the same random draws (shared with the GPU suite)."""
    torch.manual_seed(0)
    model = randomized(ContinuousAR(tiny_model_config(order))).to(device).eval()
    labels = torch.tensor([0, 1, 2, 3], device=device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        cached = model.generate(labels, cfg=1.5, generator=torch.Generator(device).manual_seed(2), return_tokens=True,
                                static_shapes=static_shapes)
        generator = torch.Generator(device).manual_seed(2)
        n, rows = model.tokenizer.num_tokens, 2
        cond = torch.cat([model.conditioner(labels, 4), model.conditioner(None, 4)])
        gen_order = model.order.generation_order(4, n, generator, device)
        ordered = torch.zeros(4, n, model.tokenizer.token_dim, device=device)
        for i in range(n):
            prefix = gen_order.repeat(rows, 1)
            inputs = model.causal_inputs(ordered[:, :i].repeat(rows, 1, 1), prefix[:, :i], prefix[:, 1 : i + 1])
            x = torch.cat([model.causal_prefix(cond, prefix[:, 0]), inputs], dim=1)
            hidden = model.backbone(x, causal=True)[:, -1]  # no cache: the whole prefix again
            ordered[:, i] = generation.sample_step(model, hidden, i + 1, cfg=1.5, cfg_schedule="linear", temperature=1.0, generator=generator)
    free = torch.empty_like(ordered).scatter_(1, gen_order[..., None].expand_as(ordered), ordered)
    assert cached.abs().mean() > 0.1  # real tokens, not the untrained head's zeros
    torch.testing.assert_close(cached, free, rtol=tol, atol=tol)
