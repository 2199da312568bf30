from importlib.metadata import entry_points

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from carl.cli import app
from carl.config import load_recipe
from carl.plugins import plugin_infos, recipe_files, registry
from carl_image_ear.images import ImageData, ImageDataConfig
from carl_image_ear.mnist import mnist_arrays


def test_discovered_through_the_entry_point():
    assert "image_ear" in {ep.name for ep in entry_points(group="carl")}
    info = {i.name: i for i in plugin_infos()}["image_ear"]
    assert info.error is None and info.provides == {
        "tokenizers": ["kl16"], "datasets": ["images"], "metrics": ["fid"], "recipes": ["image_ear"],
        "pretrained": ["mnist-ae"]}
    assert registry("datasets").get("images") is ImageData
    assert "mnist-ear" in recipe_files()
    result = CliRunner().invoke(app, ["plugins"])
    assert "image_ear 0.1.0" in result.output and "datasets: images" in result.output


def test_embedded_digits_and_splits():
    images, labels = mnist_arrays("all")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8 and set(labels.tolist()) == set(range(10))
    train, held = mnist_arrays("train"), mnist_arrays("heldout")
    assert len(train[0]) == 8000 and len(held[0]) == 2000
    # disjoint: no held-out digit is among the training ones
    train_keys = {im.tobytes() for im in train[0]}
    assert sum(im.tobytes() in train_keys for im in held[0]) < 5  # MNIST has a few exact duplicates at most
    with pytest.raises(ValueError, match="unknown split"):
        mnist_arrays("test")


def test_dataset_items_and_render():
    source = ImageData(ImageDataConfig())
    ds = source.dataset("train")
    item = ds[:4]
    assert item["data"].shape == (4, 1, 28, 28) and item["data"].dtype == torch.float32
    assert 0 <= item["data"].min() and item["data"].max() <= 1 and item["condition"].dtype == torch.int64
    pictures = source.render(item["data"])
    assert pictures.shape == (4, 28, 28, 3) and pictures.dtype == np.uint8


def test_local_image_folder(tmp_path):
    for label in ("cat", "dog"):
        (tmp_path / "train" / label).mkdir(parents=True)
        for i in range(3):
            colour = (200, 30 * i, 10) if label == "cat" else (10, 30 * i, 200)
            Image.new("RGB", (40, 30), colour).save(tmp_path / "train" / label / f"{i}.png")
    source = ImageData(ImageDataConfig(source=str(tmp_path), image_size=16, channels=3))
    ds = source.dataset("train")
    item = ds[:6]
    assert item["data"].shape == (6, 3, 16, 16) and sorted(item["condition"].tolist()) == [0, 0, 0, 1, 1, 1]


def test_mnist_recipe_trains_and_draws_a_grid(tmp_path):
    overrides = [
        "train.max_steps=2", "train.global_batch=16", "model.backbone.width=32", "model.backbone.depth=1", "model.backbone.encoder_depth=1",
        "model.score.width=32", "model.score.depth=1", "sample.num_steps=4", "sample.per_row=2", "train.tracker=none",
    ]
    result = CliRunner().invoke(app, ["train", "mnist-ear", *overrides, "--output", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "![samples](samples.png)" in (tmp_path / "README.md").read_text()
    import json

    assert json.loads((tmp_path / "carl.json").read_text())["plugins"] == {"image_ear": {"distribution": "carl-image-ear", "version": "0.1.0"}}
    grid = Image.open(tmp_path / "samples.png")
    assert grid.size == (2 * 32, 10 * 32)  # one row per digit, 28 px + 2 x 2 px padding
    result = CliRunner().invoke(app, ["sample", str(tmp_path), "--labels", "3,7", "--num", "4", "--steps", "4", "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "s.png").size == (4 * 32, 2 * 32)
    main, pixels = load_recipe("mnist-ear").model, load_recipe("mnist-ear-pixels").model
    assert (main.tokenizer.name, main.tokenizer.options.path) == ("autoencoder", "mnist-ae")  # the learned latents
    assert (pixels.tokenizer.name, pixels.tokenizer.options.patch) == ("patch", (4, 4))
