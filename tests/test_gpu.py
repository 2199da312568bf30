"""The GPU suite, run with ``python -m pytest -m gpu`` on a machine with CUDA (README, "Running on
GPUs"); without CUDA every test here is skipped. The image plugin's part (KL-16, ``carl cache``,
``mnist-ear`` in bf16 with ``train.compile``) is ``plugins/image_ear/tests/test_gpu_image.py``."""

import copy
import math

import pytest
import torch
from safetensors.torch import load_file
from torch.profiler import ProfilerActivity, profile

from carl.training.accel import compile_model
from carl.config import load_recipe
from carl.model import ContinuousAR
from carl.api import train
from carl.training.trainer import Trainer
from helpers import tiny_model_config
from helpers.models import check_kv_cache_sampling, randomized

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate keeps one AcceleratorState per process: a bf16 run would refuse the next run's
    precision. Forget it after each test (the distributed PartialState stays)."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
DIFFUSION = {"name": "diffusion", "depth": 1, "width": 16, "sample_steps": 10, "clip_x0": 1.0}  # clipped: CPU-CUDA rounding is not amplified


def batch_on(device, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"tokens": torch.randn(size, 8, 2, generator=g).to(device), "condition": torch.randint(0, 4, (size,), generator=g).to(device)}


def held_out_loss(model: ContinuousAR, data: dict, dtype=torch.bfloat16) -> float:
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        return model.loss({k: v.to(CUDA) for k, v in data.items()}).item()


def test_bf16_training_through_accelerate_lowers_the_loss(tmp_path):
    cfg = load_recipe("tiny", ["train.mixed_precision=bf16", "train.max_steps=60", "train.checkpoint_every=null"])
    data = cfg.data.build("datasets").dataset()[:256]
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.setup()
    try:
        assert trainer.accelerator.device.type == "cuda" and trainer.accelerator.mixed_precision == "bf16"
        assert next(trainer.ema.module.parameters()).is_cuda  # the EMA is updated where the weights are
        assert trainer.optimizer.optimizer.defaults["fused"]
        model = trainer.accelerator.unwrap_model(trainer.model)
        before = held_out_loss(model, data)
        model.train()
        trainer.train()
    finally:
        trainer.cleanup()
    after = held_out_loss(model, data)
    assert math.isfinite(trainer.last_loss) and math.isfinite(after)
    assert after < 0.8 * before, (before, after)


def test_resume_on_cuda_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    # Dropout and label dropout draw from the CUDA generator: a resume that lost its CUDA RNG state,
    # optimizer state or data position would be far off. Deterministic kernels make both runs
    # reproducible; the tolerance only absorbs kernels without a deterministic variant (warned about).
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        overrides = ["train.max_steps=24", "train.checkpoint_every=7", "train.lr_schedule=cosine", "train.warmup_epochs=0.5",
                     "model.backbone.dropout=0.1", "train.global_batch=16", "train.micro_batch=8"]
        full = train(load_recipe("tiny", overrides), output=tmp_path / "full", progress=False)
        train(load_recipe("tiny", overrides + ["train.max_steps=10"]), output=tmp_path / "cut", progress=False)
        (tmp_path / "cut" / "checkpoints" / "step-0000010").rename(tmp_path / "cut" / "lost")  # resume from step 7
        resumed = train(load_recipe("tiny", overrides), output=tmp_path / "cut", resume=True, progress=False)
    finally:
        torch.use_deterministic_algorithms(False)
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(full / "checkpoints" / "step-0000024" / name)
        b = load_file(resumed / "checkpoints" / "step-0000024" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=f"{name}:{key}")


@pytest.mark.parametrize("order,score", [("masked", None), ("causal", None), ("masked", DIFFUSION)])
def test_sampling_is_reproducible_with_cuda_and_cpu_generators(order, score):
    torch.manual_seed(0)
    on_cpu = randomized(ContinuousAR(tiny_model_config(order, score=score))).eval()
    on_gpu = copy.deepcopy(on_cpu).to(CUDA)
    labels = torch.tensor([0, 1, 2, 3])

    def draw(model, generator):
        return model.generate(labels, num_steps=4, cfg=2.0, temperature=0.8, generator=generator, return_tokens=True)

    a, b = (draw(on_gpu, torch.Generator(CUDA).manual_seed(1)) for _ in range(2))
    assert a.is_cuda and a.abs().mean() > 0.1
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c, d = (draw(on_gpu, torch.Generator().manual_seed(1)) for _ in range(2))  # CPU generator, CUDA model
    torch.testing.assert_close(c, d, rtol=0, atol=0)
    # The same CPU draws give the same samples as the CPU model, up to float rounding.
    torch.testing.assert_close(c.cpu(), draw(on_cpu, torch.Generator().manual_seed(1)), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("order", ["causal", "random"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_kv_cache_sampling_equals_cache_free_sampling_on_cuda(order, dtype, tol, static):
    check_kv_cache_sampling(order, CUDA, dtype, tol, static_shapes=static)


@pytest.mark.parametrize("order,encoder_depth", [("masked", 0), ("masked", 1), ("causal", 0)])
def test_compiled_matches_eager(order, encoder_depth):
    torch.manual_seed(0)
    eager = randomized(ContinuousAR(tiny_model_config(order, encoder_depth=encoder_depth))).to(CUDA).eval()
    compiled = copy.deepcopy(eager)
    compile_model(compiled)
    batch = batch_on(CUDA)
    losses = []
    for model in (eager, compiled):
        torch.manual_seed(3)  # the same plan and generator noise: random draws stay in eager code
        loss = model.loss(batch)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)
    if order == "masked":  # the compiled backbone samples too (the causal order's KV cache stays eager)
        kwargs = dict(num_steps=4, cfg=2.0, return_tokens=True)
        x = eager.generate(torch.tensor([0, 1]), generator=torch.Generator(CUDA).manual_seed(4), **kwargs)
        y = compiled.generate(torch.tensor([0, 1]), generator=torch.Generator(CUDA).manual_seed(4), **kwargs)
        torch.testing.assert_close(y, x, rtol=1e-3, atol=1e-3)


def test_compiled_bf16_steps_do_not_recompile():
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked", encoder_depth=1)).to(CUDA)
    compile_model(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    batch = batch_on(CUDA)

    def step() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(8):
        step()
    graphs = counters["stats"]["unique_graphs"]
    losses = torch.stack([step() for _ in range(12)])
    assert counters["stats"]["unique_graphs"] == graphs, "a training step recompiled"
    assert torch.isfinite(losses).all()
    torch._dynamo.reset()


@pytest.mark.parametrize("order", ["masked", "causal"])
@pytest.mark.parametrize("dtype,kernels", [(torch.bfloat16, ("flash", "cudnn")), (torch.float32, ("flash", "efficient", "cudnn"))])
def test_fused_attention_kernels_are_selected(order, dtype, kernels):
    # head dim 64, as in EAR-B: SDPA must dispatch to a fused kernel, never to the math fallback.
    model = ContinuousAR(tiny_model_config(order, width=128, heads=2)).to(CUDA)
    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        model(batch_on(CUDA)).backward()
    names = {event.name for event in prof.events() if "scaled_dot_product" in event.name or "attention" in event.name}
    assert any(kernel in name for name in names for kernel in kernels), names
    assert not any("math" in name for name in names), names


@pytest.mark.parametrize("order,encoder_depth", [("masked", 0), ("masked", 1), ("causal", 0)])
def test_a_training_step_never_waits_for_the_gpu(order, encoder_depth):
    # What carl.train does per step (bf16 forward, backward, clipping, fused AdamW, the EMA) with
    # CUDA's sync debug mode raising on any host-device synchronisation (.item(), boolean indexing,
    # blocking copies): only log intervals may read the loss back.
    from carl.training.accel import DeviceEMA, optimizer_options

    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config(order, encoder_depth=encoder_depth)).to(CUDA)
    ema = DeviceEMA(model, 0.999, device=CUDA)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **optimizer_options(CUDA))
    batch = batch_on(CUDA)

    def step() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update_parameters(model)
        return loss.detach()

    step()  # the optimizer's state is created on the first step
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [step() for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(torch.stack(losses)).all()
