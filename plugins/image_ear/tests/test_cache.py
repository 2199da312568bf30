"""Image folders with bad files, `carl cache` with resumption, and training from the cache."""

import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from carl.cli import app
from carl_image_ear.images import ImageData, ImageDataConfig
from carl_image_ear.kl16 import KL16Config, KL16Tokenizer
from carl_image_ear.mnist import mnist_arrays

SMALL_KL16 = "{name: kl16, image_size: 32, ch: 32, ch_mult: [1, 2, 2], attn_levels: [2], z_channels: 4, weights: %s}"


def image_folder(root, per_class=6):
    """Real digits as RGB photos in the ImageNet layout, plus one corrupt and one truncated file."""
    images, labels = mnist_arrays("heldout")
    for digit in (3, 7):
        folder = root / "train" / f"class_{digit}"
        folder.mkdir(parents=True)
        for i, image in enumerate(images[labels == digit][:per_class]):
            Image.fromarray(image).convert("RGB").resize((40, 40)).save(folder / f"{i}.png")
    (root / "train" / "class_3" / "corrupt.png").write_bytes(b"\x89PNG not really an image")
    whole = (root / "train" / "class_7" / "0.png").read_bytes()
    (root / "train" / "class_7" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    return root


def test_unreadable_images_are_skipped_and_counted(tmp_path, caplog):
    source = ImageData(ImageDataConfig(source=str(image_folder(tmp_path)), image_size=32, channels=3))
    ds = source.dataset("train")
    assert len(ds) == 12 and source.skipped == 2
    assert "skipped 2 unreadable image(s)" in caplog.text
    batch = ds[:12]
    assert batch["data"].shape == (12, 3, 32, 32) and sorted(set(batch["condition"].tolist())) == [0, 1]


@pytest.fixture
def recipe(tmp_path):
    weights = tmp_path / "kl16.safetensors"
    torch.manual_seed(0)
    vae = KL16Tokenizer(KL16Config(image_size=32, ch=32, ch_mult=(1, 2, 2), attn_levels=(2,), z_channels=4))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, weights)
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"model:\n  tokenizer: {SMALL_KL16 % weights}\n"
        "  conditioner: {name: class, num_classes: 2, buffer: 2}\n"
        "  backbone: {width: 32, depth: 1, heads: 2}\n  score: {name: energy, width: 32, depth: 1, noise_dim: 8}\n"
        f"data: {{name: images, source: {image_folder(tmp_path / 'images')}, image_size: 32, channels: 3}}\n"
        f"cache: {tmp_path / 'cache'}\n"
        "train: {global_batch: 4, max_steps: 3, tracker: none, sample_every: null, checkpoint_every: null}\n"
        "sample: {num_steps: 2, rows: 2, per_row: 2}\n"
    )
    return path


def test_cache_resumes_after_an_interruption_and_training_reads_it(recipe, tmp_path, monkeypatch):
    runner = CliRunner()
    clean = runner.invoke(app, ["cache", str(recipe), "--output", str(tmp_path / "clean"), "--shard-size", "5", "--batch-size", "2"])
    assert clean.exit_code == 0, clean.output

    import carl.training.cache

    real_replace, calls = carl.training.cache.os.replace, []

    def interrupted(src, dst):  # the third shard never lands
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(carl.training.cache.os, "replace", interrupted)
    stopped = runner.invoke(app, ["cache", str(recipe), "--shard-size", "5", "--batch-size", "2"])
    assert stopped.exit_code != 0 and not (tmp_path / "cache" / "cache.json").exists()
    monkeypatch.setattr(carl.training.cache.os, "replace", real_replace)
    resumed = runner.invoke(app, ["cache", str(recipe), "--shard-size", "5", "--batch-size", "2"])
    assert resumed.exit_code == 0, resumed.output

    from carl.training.cache import load_cache
    from carl.config import load_recipe

    cfg = load_recipe(recipe)
    a, _ = load_cache(cfg, tmp_path / "clean")
    b, state = load_cache(cfg, tmp_path / "cache")
    assert len(a) == len(b) == 12 and set(b.column_names) == {"moments", "moments_flip", "condition"}
    assert b[0]["moments"].shape == (8, 8, 8)
    torch.testing.assert_close(a[:]["moments"], b[:]["moments"])
    assert torch.equal(a[:]["condition"], b[:]["condition"])

    shutil.rmtree(tmp_path / "images")  # training must not need the images any more
    result = runner.invoke(app, ["train", str(recipe), "--output", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "samples.png").exists()


def test_training_refuses_an_incomplete_cache(recipe):
    result = CliRunner().invoke(app, ["train", str(recipe), "--no-progress"])
    assert result.exit_code != 0 and "run `carl cache`" in str(result.exception or result.output)
