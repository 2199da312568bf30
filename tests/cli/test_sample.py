"""``carl sample``: where and how it samples (--device, --batch-size, --dtype), and what it refuses
before writing anything (NaN weights, non-finite settings or samples)."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import run_cli as run


def test_batch_size_device_and_dtype(four_steps, tmp_path, capsys):
    whole, chunked = tmp_path / "whole.pt", tmp_path / "chunked.pt"
    assert run(["sample", str(four_steps), "--out", str(whole), "--device", "cpu"], capsys)[0] == 0
    assert run(["sample", str(four_steps), "--out", str(chunked), "--batch-size", "5"], capsys)[0] == 0
    a, b = torch.load(whole), torch.load(chunked)
    assert a.shape == b.shape == (16, 8, 2) and torch.isfinite(b).all()
    half = tmp_path / "half.pt"
    assert run(["sample", str(four_steps), "--out", str(half), "--dtype", "bfloat16"], capsys)[0] == 0
    assert torch.load(half).dtype == torch.float32 and torch.load(half).shape == a.shape  # written as float32
    code, _, err = run(["sample", str(four_steps), "--dtype", "int8"], capsys)
    assert code == 1 and err.strip() == "error: --dtype int8: choose one of float32, bfloat16, float16"


@pytest.mark.parametrize("option, value, message", [
    ("--cfg", "inf", "error: --cfg: inf is not a finite number"),
    ("--temperature", "nan", "error: --temperature: nan is not a finite number"),
    ("--temperature", "-1", "error: --temperature: -1.0 is out of range; allowed: >= 0"),
])
def test_nonsense_settings_are_one_line_and_write_nothing(four_steps, tmp_path, option, value, message, capsys):
    code, _, err = run(["sample", str(four_steps), option, value, "--out", str(tmp_path / "x.pt")], capsys)
    assert (code, err.strip()) == (1, message) and not (tmp_path / "x.pt").exists()


def test_nan_weights_are_refused_and_nothing_is_written(four_steps, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(four_steps, broken, ignore=shutil.ignore_patterns("checkpoints"))
    state = load_file(broken / "model.safetensors")
    state["backbone.pos_embed"][0, 0, 0] = float("nan")
    save_file(state, broken / "model.safetensors")
    code, _, err = run(["sample", str(broken), "--out", str(tmp_path / "x.png")], capsys)
    assert code == 1 and "hold NaN or infinite values (first: backbone.pos_embed)" in err
    assert not (tmp_path / "x.png").exists()


def test_non_finite_samples_are_refused(four_steps, tmp_path, capsys, monkeypatch):
    from carl.model import ContinuousAR

    monkeypatch.setattr(ContinuousAR, "generate", lambda self, *a, **k: torch.full((k["batch_size"], 8, 2), float("inf")))
    code, _, err = run(["sample", str(four_steps), "--out", str(tmp_path / "x.pt")], capsys)
    assert code == 1 and "100.0% of the sampled values are NaN or infinite" in err and not (tmp_path / "x.pt").exists()


def test_without_out_data_that_draws_no_picture_is_written_as_a_tensor(four_steps, tmp_path, capsys, monkeypatch):
    from carl.data import ToySequences

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ToySequences, "render", lambda self, data: None)  # drawable in principle, not these samples
    code, out, err = run(["sample", str(four_steps)], capsys)
    assert code == 0 and out.strip() == "wrote samples.pt" and torch.load(tmp_path / "samples.pt").shape == (16, 8, 2)
