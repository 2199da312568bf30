"""The optimiser's clocks, exactly: the EMA's decay sequence and the learning-rate warm-up,
counted in optimizer steps."""

import pytest
import torch
from carl.training.accel import DeviceEMA, ema_decay
from carl.config import TrainConfig, load_recipe
from carl.training.schedule import learning_rate, lr_factor
from carl.training.trainer import Trainer


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


def test_lr_factor_warms_up_linearly_then_decays():
    factors = [lr_factor(s, warmup=4, total=12, schedule="cosine", min_ratio=0.1) for s in range(13)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0) and factors[8] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: cosine = 0
    assert factors[12] == pytest.approx(0.1) and all(a >= b for a, b in zip(factors[3:], factors[4:]))
    assert [lr_factor(s, warmup=0, total=12, schedule="constant", min_ratio=0.1) for s in (0, 11)] == [1.0, 1.0]


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # no training here
def test_trainer_counts_the_warm_up_in_optimizer_steps(tmp_path):
    # 512 toy items, global batch 32 in micro-batches of 16: 16 optimizer steps per epoch (32 loader
    # batches), so warmup_epochs 0.5 is 8 steps and the head keeps its own learning-rate scale.
    cfg = load_recipe("tiny", ["train.warmup_epochs=0.5", "train.micro_batch=16", "train.lr=0.01",
                               "train.head_lr_scale=0.5", "train.max_steps=20", "train.lr_schedule=cosine"])
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.setup()
    try:
        assert trainer.steps_per_epoch == 16 and trainer.total_steps == 20
        seen = []
        for _ in range(20):
            seen.append(sorted({group["lr"] for group in trainer.optimizer.param_groups}))
            trainer.scheduler.step()
    finally:
        trainer.cleanup()
    for step in range(8):
        assert seen[step] == pytest.approx([0.005 * (step + 1) / 8, 0.01 * (step + 1) / 8]), step
    assert seen[8] == pytest.approx([0.005, 0.01])  # warm-up over: the cosine starts at full rate
    assert seen[14] == pytest.approx([0.0025, 0.005])  # half-way through the 12 decay steps


@pytest.mark.parametrize("rule,batch,expected", [
    ("linear", 256, 4e-3), ("linear", 64, 1e-3), ("linear", 1024, 1.6e-2),
    ("sqrt", 256, 4e-3), ("sqrt", 64, 2e-3), ("sqrt", 1024, 8e-3),
])
def test_learning_rate_scales_with_the_batch_by_the_chosen_rule(rule, batch, expected):
    train = TrainConfig(base_lr=4e-3, global_batch=batch, lr_scaling=rule)
    assert learning_rate(train) == pytest.approx(expected)
    assert learning_rate(TrainConfig(base_lr=4e-3, global_batch=batch, lr_scaling=rule, lr=3e-4)) == 3e-4  # given: kept


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
@pytest.mark.parametrize("steps,expected", [(0, 4), (10, 10)])
def test_warm_up_lasts_at_least_warmup_steps(tmp_path, steps, expected):
    # 16 optimizer steps per epoch: warmup_epochs 0.25 is 4 steps, stretched to warmup_steps when that is longer
    cfg = load_recipe("tiny", ["train.warmup_epochs=0.25", f"train.warmup_steps={steps}", "train.global_batch=32",
                               "train.lr=0.01", "train.max_steps=20"])
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.setup()
    try:
        seen = []
        for _ in range(12):
            seen.append(trainer.optimizer.param_groups[0]["lr"])
            trainer.scheduler.step()
    finally:
        trainer.cleanup()
    assert seen[expected - 1] == pytest.approx(0.01) and seen[expected - 2] == pytest.approx(0.01 * (expected - 1) / expected)
