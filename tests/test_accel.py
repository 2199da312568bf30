"""The fast paths against the plain ones they replace: the on-device EMA, gathered masked targets,
the diffusion sampler's host-scalar steps, KV-cache sampling, and compiling without recompiles."""

import math

import pytest
import torch

from carl.model import generation
from carl.training.accel import DeviceEMA, compile_model, ema_decay, loader_options, optimizer_options
from carl.model import ContinuousAR
from carl.orders.base import Plan
from carl.scores.diffusion import DiffusionScore, DiffusionScoreConfig
from carl.scores.log_score import standard_normal
from helpers import tiny_model_config


def randomized(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Weights moved off their initialisation: the heads start as the constant 0, which would make
    any two samplers agree trivially."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def test_ema_matches_the_reference_formula_and_never_reads_the_device():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = DeviceEMA(model, decay=0.9)
    reference = [p.detach().clone().double() for p in model.parameters()]
    for n in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
        # The check of "no host sync": reading a device scalar as a Python value goes through
        # Tensor.item / __bool__, which the update must never call.
        with pytest.MonkeyPatch.context() as mp:
            for read in ("item", "tolist", "__bool__", "__int__", "__float__"):  # the old update used bool() and int()
                mp.setattr(torch.Tensor, read, lambda self, read=read: pytest.fail(f"the EMA update read a tensor with {read}"))
            ema.update_parameters(model)
        decay = 0.0 if n == 0 else min(0.9, (1 + n) / (10 + n))
        reference = [decay * r + (1 - decay) * p.detach().double() for r, p in zip(reference, model.parameters())]
        for r, e in zip(reference, ema.module.parameters()):
            torch.testing.assert_close(e.double(), r, rtol=1e-6, atol=1e-6)
    assert int(ema.n_averaged) == 30
    torch.testing.assert_close(ema.module[1].running_mean, model[1].running_mean)  # buffers are copied


def test_ema_decay_values():
    n = torch.tensor([0, 1, 5, 10_000])
    expected = [0.0, 2 / 11, 6 / 15, 0.999]
    assert ema_decay(n, 0.999).tolist() == pytest.approx(expected, abs=1e-15)


def test_cuda_only_options_change_nothing_on_cpu():
    cpu = torch.device("cpu")
    assert optimizer_options(cpu) == {}
    assert loader_options(cpu, 0) == {"num_workers": 0, "pin_memory": False}
    assert optimizer_options(torch.device("cuda")) == {"fused": True}
    assert loader_options(torch.device("cuda"), 4)["pin_memory"] and loader_options(torch.device("cuda"), 4)["persistent_workers"]


@pytest.mark.parametrize("encoder_depth", [0, 1])
def test_gathered_targets_equal_boolean_indexing(encoder_depth):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked", encoder_depth=encoder_depth)).eval()
    tokens, labels = torch.randn(3, 8, 2), torch.tensor([0, 1, 2])
    assert model.order.plan(3, 8).num_known is not None  # the masked order states its count
    order = torch.rand(3, 8, generator=torch.Generator().manual_seed(1)).argsort(1)
    plan = Plan(order, order.argsort(1) < 3, num_known=3)
    cond = model.conditioner(labels, 3)
    fast = model.hidden_at_targets(tokens, cond, plan)
    plain = model.hidden_at_targets(tokens, cond, Plan(plan.order, plan.known))  # no num_known: boolean masks
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("encoder_depth", [0, 1])
def test_masked_generation_matches_the_boolean_indexing_loop(encoder_depth):
    torch.manual_seed(0)
    model = randomized(ContinuousAR(tiny_model_config("masked", encoder_depth=encoder_depth))).eval()
    labels = torch.tensor([0, 3, 1])
    kwargs = dict(num_steps=4, cfg=2.0, temperature=0.8, return_tokens=True)
    fast = model.generate(labels, generator=torch.Generator().manual_seed(5), **kwargs)
    plain = boolean_mask_generation(model, labels, torch.Generator().manual_seed(5), **kwargs)
    assert fast.abs().mean() > 0.1  # real tokens, not the untrained head's zeros
    torch.testing.assert_close(fast, plain, rtol=0, atol=0)


def boolean_mask_generation(model, labels, generator, *, num_steps, cfg, temperature, return_tokens):
    """The masked-order sampler as it was before fixed-size gathers (boolean masks each step)."""
    batch, n, d = len(labels), model.tokenizer.num_tokens, model.tokenizer.token_dim
    cond = torch.cat([model.conditioner(labels, batch), model.conditioner(None, batch)])
    order = model.order.generation_order(batch, n, generator)
    ranks = order.argsort(dim=-1)
    tokens = torch.zeros(batch, n, d)
    known_before = 0
    for known_after in model.order.schedule(n, num_steps):
        known = ranks < known_before
        hidden = model.hidden_bidirectional(tokens.repeat(2, 1, 1), cond, known.repeat(2, 1))
        new = (ranks >= known_before) & (ranks < known_after)
        tokens[new] = generation.sample_step(model, hidden[new.repeat(2, 1)], known_after, cfg=cfg, cfg_schedule="linear",
                                    temperature=temperature, generator=generator)
        known_before = known_after
    return tokens


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("guided", [False, True])
def test_diffusion_fast_sampler_matches_the_table_lookup_chain(clip, guided):
    torch.manual_seed(0)
    rule = DiffusionScore(DiffusionScoreConfig(depth=2, width=32, sample_steps=25, clip_x0=clip), hidden_dim=8, token_dim=3)
    for p in rule.net.parameters():  # away from the zero-initialised output, so eps and v matter
        p.data.add_(0.1 * torch.randn_like(p))
    hidden = torch.randn(16, 8)
    guidance = None
    if guided:
        from carl.scores.base import Guidance

        guidance = Guidance(uncond=torch.randn(16, 8), scale=2.5)
    fast = rule.sample(hidden, temperature=0.9, guidance=guidance, generator=torch.Generator().manual_seed(3))
    plain = table_lookup_sample(rule, hidden, 0.9, guidance, torch.Generator().manual_seed(3))
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


def table_lookup_sample(rule, hidden, temperature, guidance, generator):
    """The diffusion sampler as it was: the level embedded at every step, tables indexed on the device."""
    rows, schedule = hidden.shape[0], rule.sample_schedule
    if guidance is not None:
        hidden = torch.cat([hidden, guidance.uncond])
    cond = rule.net.cond_embed(hidden)
    x = standard_normal((rows, rule.net.input_proj.in_features), hidden, generator)
    with torch.no_grad():
        for i in reversed(range(len(schedule))):
            y = rule.net.time_embed(schedule.timesteps[i : i + 1]) + cond
            eps, v = rule.net(x if guidance is None else x.repeat(2, 1), y)
            if guidance is not None:
                c, u = eps.chunk(2)
                eps, v = u + guidance.scale * (c - u), v[:rows]
            mean, log_var = schedule.p_mean_log_var(x, torch.full((1,), i), eps, v, rule.config.clip_x0)
            if i > 0:
                mean = mean + torch.exp(0.5 * log_var) * temperature * standard_normal(x.shape, x, generator)
            x = mean
    return x


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("order", ["causal", "random"])
def test_kv_cache_sampling_equals_cache_free_sampling(order, static):
    check_kv_cache_sampling(order, torch.device("cpu"), static_shapes=static)


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


def test_compiled_training_does_not_recompile_across_steps():
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked", encoder_depth=1))
    compile_model(model, backend="eager")  # dynamo's graph capture and guards; no code generation
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = {"tokens": torch.randn(4, 8, 2), "condition": torch.tensor([0, 1, 2, 3])}

    def step():
        loss = model(batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    for _ in range(6):  # the masked count changes: one static compile, then one dynamic
        step()
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    losses = [step().item() for _ in range(10)]
    assert counters["stats"]["unique_graphs"] == graphs, "a training step recompiled"
    assert all(math.isfinite(v) for v in losses)
    assert "_orig_mod" not in "".join(model.state_dict())  # checkpoints keep the eager names
    torch._dynamo.reset()


@pytest.mark.parametrize("static", [True, pytest.param(False, marks=pytest.mark.slow)])  # False: the control
def test_compiled_backbone_decodes_the_static_cache_without_recompiling(static):
    """With the fixed-shape KV cache, a compiled backbone serves every causal decoding step with
    two graphs (the prefix pass, the one-token step); the growing cache needs one per length."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = randomized(ContinuousAR(tiny_model_config("causal"))).eval()
    sample = lambda: model.generate(torch.tensor([0, 1]), generator=torch.Generator().manual_seed(5),
                                    return_tokens=True, static_shapes=static)
    eager = sample()
    compile_model(model, backend="eager")
    before = counters["frames"]["ok"]  # a process-wide counter: earlier tests compiled too
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False, cache_size_limit=64):  # count, don't generalise
        compiled = sample()
        frames = counters["frames"]["ok"] - before
        again = sample()
    torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, compiled, rtol=0, atol=0)
    if static:
        assert frames <= 3, f"{frames} compiled frames: the decoding steps recompiled"  # prefix, step, head
        assert counters["frames"]["ok"] - before == frames
    else:
        assert frames > model.tokenizer.num_tokens  # the control: one graph per cache length


def test_compile_mode_is_checked():
    with pytest.raises(ValueError, match="compile mode must be one of"):
        compile_model(ContinuousAR(tiny_model_config()), mode="fastest")
