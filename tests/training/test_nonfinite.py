"""Non-finite losses, gradients and weights (:mod:`carl.training.nonfinite`): a diverging run stops
and keeps its last good checkpoint, a bounded number of bad steps may be skipped, and non-finite
weights are never written."""

import json

import pytest
import torch
from safetensors.torch import load_file

from carl.api import train
from carl.config import load_recipe
from carl.errors import NonFiniteError
from carl.model import ContinuousAR
from carl.training.checkpoints import verify
from carl.training.trainer import Trainer


def poison_losses(monkeypatch, bad_calls):
    """Make the training loss NaN on the given forward calls (1-based)."""
    original, calls = ContinuousAR.forward, {"n": 0}

    def forward(self, batch):
        calls["n"] += 1
        loss = original(self, batch)
        return loss * float("nan") if calls["n"] in bad_calls else loss

    monkeypatch.setattr(ContinuousAR, "forward", forward)


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint_and_model(tmp_path, monkeypatch):
    poison_losses(monkeypatch, bad_calls=range(6, 100))  # NaN from step 6 on
    cfg = load_recipe("tiny", ["train.max_steps=12", "train.checkpoint_every=4", "train.log_every=4"])
    with pytest.raises(NonFiniteError, match=r"NaN or infinite in 3 of steps 5-8; .*checkpoints/step-0000004"):
        train(cfg, output=tmp_path, progress=False)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-0000004"]
    assert verify(tmp_path / "checkpoints" / "step-0000004") is None
    exported, ema = load_file(tmp_path / "model.safetensors"), load_file(tmp_path / "checkpoints/step-0000004/ema.safetensors")
    assert exported.keys() == ema.keys() and all(torch.equal(exported[k], ema[k]) for k in ema)
    assert json.loads((tmp_path / ".carl" / "run.json").read_text())["status"] == "failed"


def test_skip_nonfinite_skips_a_bounded_number_of_bad_steps(tmp_path, monkeypatch):
    poison_losses(monkeypatch, bad_calls={3, 5})
    overrides = ["train.max_steps=6", "train.checkpoint_every=null", "train.grad_clip=null"]
    out = train(load_recipe("tiny", overrides + ["train.skip_nonfinite=2"]), output=tmp_path / "two", progress=False)
    assert all(torch.isfinite(t).all() for t in load_file(out / "model.safetensors").values())
    poison_losses(monkeypatch, bad_calls={3, 5})  # a fresh count for the second run
    with pytest.raises(NonFiniteError, match="2 steps with a non-finite loss or gradient by step 5, more than "
                                             "train.skip_nonfinite=1 allows"):
        train(load_recipe("tiny", overrides + ["train.skip_nonfinite=1"]), output=tmp_path / "one", progress=False)


def test_nonfinite_weights_before_any_checkpoint_are_refused_and_say_so(tmp_path):
    trainer = Trainer(load_recipe("tiny", ["train.max_steps=4"]), output=tmp_path, progress=False)
    trainer.setup()
    try:
        with torch.no_grad():
            next(trainer.ema.module.parameters()).fill_(float("nan"))
        with pytest.raises(Exception, match=r"the ema weights are NaN or infinite at step 0; stopped without writing "
                                            r"them \(no checkpoint was written yet\)"):
            trainer.save_checkpoint()
        assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())
    finally:
        trainer.cleanup()


def test_without_check_grads_a_non_finite_gradient_norm_passes_and_a_non_finite_loss_still_stops():
    from carl.training.nonfinite import NonFiniteGuard

    lenient = NonFiniteGuard(skip_limit=0, check_grads=False)  # fp16: the gradient scaler skips those steps itself
    lenient.observe_loss(torch.tensor(1.0))
    assert lenient.end_step(1, torch.tensor(float("inf"))) is False
    lenient.check(1, "no checkpoint was written yet")  # nothing to report
    strict = NonFiniteGuard(skip_limit=0, check_grads=True)
    strict.observe_loss(torch.tensor(1.0))
    strict.end_step(1, torch.tensor(float("inf")))
    with pytest.raises(NonFiniteError, match="NaN or infinite at step 1;"):
        strict.check(1, "no checkpoint was written yet")
    lenient.observe_loss(torch.tensor(float("nan")))
    lenient.end_step(2, torch.tensor(1.0))
    with pytest.raises(NonFiniteError, match="NaN or infinite at step 2;"):
        lenient.check(2, "no checkpoint was written yet")
