"""`carl eval`: the generation side for real, the torch-fidelity call through a stand-in module
whose feature extractor is a tiny function of the pixels."""

import json
import sys
import types

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import carl
from carl.cli import app
from carl.errors import CarlError
from carl.plugins import register_commands
from carl_image_ear.evaluate import EvalSettings, balanced_labels, fidelity_metrics, generate_images

TINY = ["train.max_steps=2", "train.global_batch=16", "model.backbone.width=32", "model.backbone.depth=1", "model.backbone.encoder_depth=1",
        "model.score.width=32", "model.score.depth=1", "train.tracker=none", "train.sample_every=null"]


def features(images: torch.Tensor) -> np.ndarray:
    """The stand-in feature extractor: per-channel mean and spread of the pixels."""
    x = images.float() / 255
    return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1).numpy()


@pytest.fixture
def fake_fidelity(monkeypatch):
    calls = []

    def calculate_metrics(**options):
        calls.append(options)
        if options.get("feature_extractor_weights_path") is None and fake.offline:
            raise OSError("urlopen error: could not download pt_inception weights")
        images = torch.stack([options["input1"][i] for i in range(len(options["input1"]))])
        assert images.dtype == torch.uint8 and images.shape[1] == 3
        f = features(images)
        stats = np.load(options["fid_statistics_file"])
        mu, sigma = f.mean(0), np.cov(f, rowvar=False)
        return {"frechet_inception_distance": float(((mu - stats["mu"]) ** 2).sum() + np.trace(sigma + stats["sigma"])),
                "inception_score_mean": 1.0 + float(f.std()), "inception_score_std": 0.0}

    fake = types.SimpleNamespace(calculate_metrics=calculate_metrics, offline=False, calls=calls)
    monkeypatch.setitem(sys.modules, "torch_fidelity", fake)
    return fake


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    result = CliRunner().invoke(app, ["train", "mnist-ear", *TINY, "--output", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


def test_labels_are_class_balanced():
    counts = torch.bincount(balanced_labels(1000, 10))
    assert counts.tolist() == [100] * 10


def test_generation_is_batched_balanced_and_seeded(tiny_model):
    from carl.model import load_model

    model, _ = load_model(tiny_model)
    settings = EvalSettings(num_images=25, batch_size=10, num_steps=2, seed=3)
    images = generate_images(model, settings, progress=False)
    assert images.shape == (25, 3, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(images, generate_images(model, settings, progress=False))


def test_metrics_go_through_torch_fidelity(tmp_path, fake_fidelity):
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    f = features(images)
    np.savez(tmp_path / "ref.npz", mu=f.mean(0), sigma=np.cov(f, rowvar=False))
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"stand-in")
    metrics = fidelity_metrics(images, str(tmp_path / "ref.npz"), inception_weights=str(weights), precision_recall=True)
    call = fake_fidelity.calls[-1]
    assert call["isc"] and call["fid"] and call["prc"] and call["feature_extractor_weights_path"] == str(weights)
    assert set(metrics) == {"fid", "is", "is_std"} and metrics["fid"] == pytest.approx(2 * np.trace(np.cov(f, rowvar=False)), rel=1e-5)


def test_clear_errors_without_torch_fidelity_or_inception_weights(tmp_path, fake_fidelity, monkeypatch):
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    np.savez(tmp_path / "ref.npz", mu=np.zeros(6), sigma=np.eye(6))
    fake_fidelity.offline = True
    with pytest.raises(CarlError, match="pass --inception-weights PATH"):
        fidelity_metrics(images, str(tmp_path / "ref.npz"))
    with pytest.raises(CarlError, match="reference 'nowhere.npz' not found"):
        fidelity_metrics(images, "nowhere.npz")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # not installed
    with pytest.raises(CarlError, match=r"pip install 'carl-image-ear\[eval\]'"):
        fidelity_metrics(images, str(tmp_path / "ref.npz"))


def test_eval_command_writes_grid_and_metrics(tiny_model, tmp_path, fake_fidelity):
    register_commands(app)
    np.savez(tmp_path / "ref.npz", mu=np.zeros(6), sigma=np.eye(6))
    result = CliRunner().invoke(app, ["eval", str(tiny_model), "--reference", str(tmp_path / "ref.npz"), "--num", "20",
                                      "--batch-size", "10", "--steps", "2", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "eval" / "grid.png").exists() and "fid" in json.loads((tmp_path / "eval" / "metrics.json").read_text())
    results = json.loads((tiny_model / "results.json").read_text())  # the figures travel with the model
    sample = carl.open_model(tiny_model).sample
    key = (f"fid (carl eval: 20 images, 2 steps, CFG {sample.cfg:g} {sample.cfg_schedule}, temperature "
           f"{sample.temperature:g}, seed 0, against ref.npz)")
    assert key in results and results[key] == round(json.loads((tmp_path / "eval" / "metrics.json").read_text())["fid"], 4)
    assert key in (tiny_model / "README.md").read_text()
    result = CliRunner().invoke(app, ["eval", str(tiny_model), "--reference", str(tmp_path / "ref.npz"), "--num", "20",
                                      "--batch-size", "10", "--steps", "3", "--out", str(tmp_path / "eval2"), "--no-record"])
    assert result.exit_code == 0 and not any("3 steps" in k for k in json.loads((tiny_model / "results.json").read_text()))


def test_fid_during_training(tmp_path, fake_fidelity):
    np.savez(tmp_path / "ref.npz", mu=np.zeros(6), sigma=np.eye(6))
    overrides = [*TINY[1:], "train.max_steps=4", "sample.num_steps=2", "eval.every_epochs=0.004",  # every 2 of 500 steps/epoch
                 f"eval.metric={{name: fid, reference: {tmp_path / 'ref.npz'}, num_images: 20, batch_size: 10}}"]
    result = CliRunner().invoke(app, ["train", "mnist-ear", *overrides, "--output", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.output.count("eval at step") == 2 and "fid" in result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "fid (eval.metric, step 4)" in results  # the latest evaluation, in results.json and the card
    assert len(fake_fidelity.calls) == 2 and len(fake_fidelity.calls[0]["input1"]) == 20
