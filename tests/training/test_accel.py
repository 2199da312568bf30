"""The fast paths of training (:mod:`carl.training.accel`): the on-device EMA and its decay sequence,
the CUDA-only options, and compiling without recompiles."""

import math

import pytest
import torch

from carl.model import ContinuousAR
from carl.config import load_recipe
from carl.errors import RecipeError
from carl.training import accel
from carl.training.accel import DeviceEMA, compile_model, ema_decay, loader_options, optimizer_options, resolve_mixed_precision

from helpers import tiny_model_config
from helpers.models import randomized


# ---------------------------------------------------------------------------------------------
# The EMA: on the device, with the warm-up decay (1 + n) / (10 + n)


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


def test_ema_moves_by_one_minus_the_decay():
    model = torch.nn.Linear(2, 1, bias=False)
    ema = DeviceEMA(model, 0.9)
    ema.n_averaged.fill_(100)  # warm-up decay (101 / 110) > 0.9: the configured decay wins
    with torch.no_grad():
        ema.module.weight.copy_(torch.tensor([[0.0, 10.0]]))
        model.weight.copy_(torch.tensor([[1.0, 0.0]]))
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module.weight, torch.tensor([[0.1, 9.0]]), rtol=0, atol=1e-6)
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module.weight, torch.tensor([[0.19, 8.1]]), rtol=0, atol=1e-6)


def test_ema_decay_warms_up_as_one_plus_n_over_ten_plus_n():
    for n, decay in ((1, 2 / 11), (8, 9 / 18), (90, 91 / 100)):
        assert float(ema_decay(torch.tensor(n), 0.9999)) == pytest.approx(decay, abs=1e-12)
    assert float(ema_decay(torch.tensor(0), 0.9999)) == 0.0  # the first update copies
    assert float(ema_decay(torch.tensor(10**6), 0.9999)) == 0.9999


def test_averaged_model_follows_the_decay_sequence():
    model = torch.nn.Linear(1, 1, bias=False)
    ema = DeviceEMA(model, 0.5)
    expected = None
    for n, value in enumerate((4.0, 2.0, 8.0, 0.0)):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update_parameters(model)
        # the first update copies; update n >= 1 keeps min(0.5, (1 + n') / (10 + n')) with n' = n updates so far
        expected = value if expected is None else (decay := min(0.5, (1 + n) / (10 + n))) * expected + (1 - decay) * value
        assert ema.module.weight.item() == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Options and compiling


def test_cuda_only_options_change_nothing_on_cpu():
    cpu = torch.device("cpu")
    assert optimizer_options(cpu) == {}
    assert loader_options(cpu, 0) == {"num_workers": 0, "pin_memory": False}
    assert optimizer_options(torch.device("cuda")) == {"fused": True}
    assert loader_options(torch.device("cuda"), 4)["pin_memory"] and loader_options(torch.device("cuda"), 4)["persistent_workers"]


# ---------------------------------------------------------------------------------------------
# mixed_precision: auto


def _cpu_probes(monkeypatch, *, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


@pytest.mark.parametrize("avx512_bf16,amx,expected", [(True, False, "bf16"), (False, True, "bf16"), (False, False, "no")])
def test_auto_precision_is_bf16_only_on_a_cpu_that_multiplies_bf16(monkeypatch, avx512_bf16, amx, expected):
    _cpu_probes(monkeypatch, avx512_bf16=avx512_bf16, amx=amx)
    assert resolve_mixed_precision("auto") == expected


def test_auto_precision_without_the_probes_is_fp32(monkeypatch):
    _cpu_probes(monkeypatch, avx512_bf16=True, amx=True)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert not accel.native_bf16() and resolve_mixed_precision("auto") == "no"


def test_auto_precision_on_cuda_asks_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for supported, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert resolve_mixed_precision("auto") == expected


@pytest.mark.parametrize("choice", ["no", "bf16", "fp16"])
def test_explicit_precisions_are_kept(monkeypatch, choice):
    _cpu_probes(monkeypatch, avx512_bf16=False, amx=False)
    assert resolve_mixed_precision(choice) == choice


def test_recipes_take_auto_and_refuse_other_words():
    assert load_recipe("tiny", ["train.mixed_precision=auto"]).train.mixed_precision == "auto"
    with pytest.raises(RecipeError, match="train.mixed_precision"):
        load_recipe("tiny", ["train.mixed_precision=bf17"])


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
