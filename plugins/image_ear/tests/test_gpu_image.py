"""The image plugin's part of the GPU suite (``python -m pytest -m gpu``): KL-16 on CUDA against
the CPU, ``carl cache`` encoding on the GPU, and the ``mnist-ear`` recipe in bf16 with
``train.compile``. Skipped without CUDA."""

import math

import pytest
import torch
from typer.testing import CliRunner

from carl.training.cache import load_cache
from carl.cli import app
from carl.config import load_recipe
from carl.training.trainer import Trainer
from carl_image_ear.kl16 import KL16Config, KL16Tokenizer
from test_cache import recipe  # noqa: F401  (the fixture: a small KL-16 recipe over an image folder)
from test_kl16 import randomized

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate keeps one AcceleratorState per process: a bf16 run would refuse the next run's
    precision. Forget it after each test (the distributed PartialState stays)."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()


@pytest.fixture
def exact_fp32(monkeypatch):
    """fp32 convolutions and matmuls without TF32, so CUDA and CPU agree to float rounding."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def test_kl16_encode_decode_on_cuda_match_the_cpu(exact_fp32):
    on_cpu = randomized(KL16Tokenizer(KL16Config(decode_chunk=2)))
    on_gpu = randomized(KL16Tokenizer(KL16Config(decode_chunk=2))).to(CUDA)
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    moments = on_cpu.moments(images)
    torch.testing.assert_close(on_gpu.moments(images.to(CUDA)).cpu(), moments, atol=1e-3, rtol=1e-4)
    tokens = on_cpu.tokens_from_moments(moments, sample=False)
    assert tokens.shape == (2, 256, 16)
    decoded = on_gpu.decode(tokens.to(CUDA))
    torch.testing.assert_close(decoded.cpu(), on_cpu.decode(tokens), atol=1e-3, rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):  # what sampling under bf16 runs
        assert torch.isfinite(on_gpu.decode(tokens.to(CUDA))).all()


def test_carl_cache_encodes_on_the_gpu_and_training_reads_it(recipe, tmp_path, exact_fp32):  # noqa: F811
    torch.cuda.reset_peak_memory_stats()
    result = CliRunner().invoke(app, ["cache", str(recipe), "--shard-size", "5", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert torch.cuda.max_memory_allocated() > 0  # the tokenizer ran on the GPU
    cfg = load_recipe(recipe)
    cached, state = load_cache(cfg, tmp_path / "cache")
    tokenizer = cfg.model.tokenizer.build("tokenizers")  # weights are read at prepare(): the cache's state instead
    tokenizer.load_state_dict(state)
    images = cfg.data.build("datasets").dataset("train")[:12]["data"]
    torch.testing.assert_close(cached[:]["moments"], tokenizer.eval().moments(images), atol=1e-3, rtol=1e-4)
    run = CliRunner().invoke(app, ["train", str(recipe), "--output", str(tmp_path / "run"), "--no-progress"])
    assert run.exit_code == 0, run.output


def test_mnist_ear_in_bf16_with_compile_lowers_the_loss(tmp_path):
    cfg = load_recipe("mnist-ear", ["train.mixed_precision=bf16", "train.compile=true", "train.max_steps=150",
                                    "train.sample_every=null", "train.checkpoint_every=null", "train.tracker=none"])
    data = cfg.data.build("datasets").dataset("train")[:256]
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.setup()
    model = trainer.accelerator.unwrap_model(trainer.model)

    def loss() -> float:
        model.eval()
        torch.manual_seed(0)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            value = model.loss({k: v.to(CUDA) for k, v in data.items()}).item()
        model.train()
        return value

    try:
        before = loss()
        trainer.train()
    finally:
        trainer.cleanup()
    after = loss()
    assert math.isfinite(trainer.last_loss) and after < 0.9 * before, (before, after)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "samples.png").exists()


def test_kl16_posterior_draws_from_a_cpu_generator_match_the_cpu():
    """A CPU generator draws the flips and the posterior noise on the CPU for moments on CUDA too,
    so a seed gives the same tokens on either device."""
    tokenizer = KL16Tokenizer(KL16Config(image_size=32, ch=32, ch_mult=(1, 2, 2), attn_levels=(2,), z_channels=4))
    moments = torch.cat([torch.randn(6, 4, 2, 2), torch.rand(6, 4, 2, 2) - 1], 1)
    row = {"moments": moments, "moments_flip": moments.flip(-1)}
    cpu = tokenizer.from_cache(row, generator=torch.Generator().manual_seed(0))
    cuda = tokenizer.to(CUDA).from_cache({k: v.to(CUDA) for k, v in row.items()}, generator=torch.Generator().manual_seed(0))
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu)
    plain = tokenizer.tokens_from_moments(moments.to(CUDA), sample=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(plain.cpu(), tokenizer.cpu().tokens_from_moments(moments, sample=True, generator=torch.Generator().manual_seed(1)))
