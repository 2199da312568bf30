"""`carl sample --inpaint`: an image file completed from its kept part (--keep or a --mask image),
drawn as originals with holes above their completions, or written as a tensor."""

import numpy as np
import pytest
import torch
from PIL import Image

import carl
from carl_image_ear.mnist import mnist_arrays
from helpers import run_cli as run

TINY = ["train.max_steps=1", "train.global_batch=16", "model.backbone.width=32", "model.backbone.depth=1",
        "model.backbone.encoder_depth=1", "model.score.width=32", "model.score.depth=1", "train.tracker=none",
        "train.sample_every=null", "sample.num_steps=4"]


@pytest.fixture(scope="module")
def digit_model(tmp_path_factory):
    return carl.train("mnist-ear", TINY, output=tmp_path_factory.mktemp("mnist"), progress=False)


@pytest.fixture
def digit(tmp_path):
    images, labels = mnist_arrays("heldout")
    Image.fromarray(images[0]).save(tmp_path / "digit.png")
    return tmp_path / "digit.png", int(labels[0]), torch.from_numpy(images[0]).float() / 255


def test_keep_top_completes_the_bottom_and_keeps_the_top(digit_model, digit, tmp_path, capsys):
    path, label, pixels = digit
    out = tmp_path / "done.pt"
    code, stdout, err = run(["sample", str(digit_model), "--inpaint", str(path), "--keep", "top", "--num", "3",
                             "--labels", str(label), "--out", str(out)], capsys)
    assert code == 0, err
    done = torch.load(out)
    assert done.shape == (3, 1, 28, 28)
    assert torch.allclose(done[:, 0, :14], pixels[:14].expand(3, 14, 28), atol=1 / 255)  # the kept half, as read
    assert not torch.allclose(done[:, 0, 14:], pixels[14:].expand(3, 14, 28), atol=0.05)  # the rest is generated


def test_a_mask_image_white_where_new_content_goes_equals_keep_top(digit_model, digit, tmp_path, capsys):
    path, label, _ = digit
    mask = np.zeros((28, 28), np.uint8)
    mask[14:] = 255  # white: to generate
    Image.fromarray(mask).save(tmp_path / "mask.png")
    common = ["--inpaint", str(path), "--num", "2", "--labels", str(label), "--seed", "3"]
    assert run(["sample", str(digit_model), *common, "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "a.pt")], capsys)[0] == 0
    assert run(["sample", str(digit_model), *common, "--keep", "top", "--out", str(tmp_path / "b.pt")], capsys)[0] == 0
    assert torch.equal(torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt"))


def test_the_picture_shows_the_holes_above_the_completions(digit_model, digit, tmp_path, capsys, monkeypatch):
    path, label, _ = digit
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run(["sample", str(digit_model), "--inpaint", str(path), "--inpaint", str(path), "--keep", "left",
                           "--num", "2", "--labels", f"{label},{label}"], capsys)
    assert code == 0 and stdout.strip() == "wrote completion.png"
    with Image.open(tmp_path / "completion.png") as grid:
        assert grid.size == (2 * 32, 3 * 32)  # 2 originals across; the holes, then 2 completions each (28 + 2 x 2 padding)


@pytest.mark.parametrize("extra, message", [
    ([], "--inpaint needs what to keep: --mask FILE (white where new content goes) or --keep top|bottom|left|right"),
    (["--keep", "middle"], "--keep middle: choose one of top, bottom, left, right"),
    (["--keep", "top", "--labels", "1,2"], "--labels gives 2 conditions for 1 --inpaint items: give one each"),
])
def test_what_cannot_be_completed_is_one_line(digit_model, digit, extra, message, capsys):
    code, _, err = run(["sample", str(digit_model), "--inpaint", str(digit[0]), *extra], capsys)
    assert (code, err.strip()) == (1, f"error: {message}")


def test_a_file_that_is_not_an_image_is_named(digit_model, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an image")
    code, _, err = run(["sample", str(digit_model), "--inpaint", str(tmp_path / "notes.txt"), "--keep", "top"], capsys)
    assert code == 1 and err.startswith(f"error: cannot read the image {tmp_path / 'notes.txt'}")


def test_kl16_knows_a_token_when_its_16_x_16_block_is_known():
    from carl_image_ear.kl16 import KL16Config, KL16Tokenizer

    tokenizer = KL16Tokenizer(KL16Config(image_size=32, ch=32, ch_mult=[1, 1, 1, 1, 1], num_res_blocks=1, attn_levels=[]))
    known = torch.ones(1, 3, 32, 32, dtype=torch.bool)
    known[0, 2, 20, 3] = False  # one value of one channel in block (1, 0)
    assert tokenizer.token_mask(known).tolist() == [[True, True, False, True]]
