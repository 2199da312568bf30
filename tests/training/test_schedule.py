"""The optimiser's clocks, exactly (:mod:`carl.training.schedule`): batching, the learning rate and
its scaling with the batch, the warm-up counted in optimizer steps, and the decay to ``min_lr``."""

import pytest

from carl.config import TrainConfig, load_recipe
from carl.training.jobs.ar import train_temperature
from carl.training.schedule import learning_rate, lr_factor, plan_batching
from carl.training.trainer import Trainer


def test_lr_factor_warms_up_linearly_then_decays():
    factors = [lr_factor(s, warmup=4, total=12, schedule="cosine", min_ratio=0.1) for s in range(13)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0) and factors[8] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: cosine = 0
    assert factors[12] == pytest.approx(0.1) and all(a >= b for a, b in zip(factors[3:], factors[4:]))
    assert [lr_factor(s, warmup=0, total=12, schedule="constant", min_ratio=0.1) for s in (0, 11)] == [1.0, 1.0]


def test_cosine_reaches_the_floor_at_the_last_step_and_stays_there():
    """One step after warm-up is the whole decay; steps past the end (a longer resumed run) keep the floor."""
    assert lr_factor(1, warmup=0, total=1, schedule="cosine", min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(10, warmup=0, total=4, schedule="cosine", min_ratio=0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("rule,batch,expected", [
    ("linear", 256, 4e-3), ("linear", 64, 1e-3), ("linear", 1024, 1.6e-2),
    ("sqrt", 256, 4e-3), ("sqrt", 64, 2e-3), ("sqrt", 1024, 8e-3),
])
def test_learning_rate_scales_with_the_batch_by_the_chosen_rule(rule, batch, expected):
    train = TrainConfig(base_lr=4e-3, global_batch=batch, lr_scaling=rule)
    assert learning_rate(train) == pytest.approx(expected)
    assert learning_rate(TrainConfig(base_lr=4e-3, global_batch=batch, lr_scaling=rule, lr=3e-4)) == 3e-4  # given: kept


def test_schedules_and_batching():
    assert [lr_factor(s, warmup=4, total=10, schedule="constant", min_ratio=0) for s in (0, 3, 9)] == [0.25, 1.0, 1.0]
    assert lr_factor(10, warmup=0, total=10, schedule="cosine", min_ratio=0.1) == pytest.approx(0.1)
    assert train_temperature(((0, 1.0), (750, 0.99)), 749.9) == 1.0
    assert train_temperature(((0, 1.0), (750, 0.99)), 750) == 0.99
    cfg = load_recipe("tiny", ["train.global_batch=2048", "train.micro_batch=64"]).train
    assert plan_batching(cfg, 8).accumulation == 4 and plan_batching(cfg, 8).micro_batch == 64
    with pytest.raises(Exception, match="not a multiple"):
        plan_batching(load_recipe("tiny", ["train.global_batch=100", "train.micro_batch=64"]).train, 1)


# ---------------------------------------------------------------------------------------------
# The schedule as the trainer's scheduler follows it


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


def test_lr_schedule_reaches_the_scheduler(tmp_path):
    """The scheduler follows the recipe's schedule: constant keeps the peak, cosine decays to min_lr."""
    rates = {}
    for schedule in ("constant", "cosine"):
        cfg = load_recipe("tiny", ["train.max_steps=4", "train.checkpoint_every=null", f"train.lr_schedule={schedule}",
                                   "train.warmup_epochs=0", "train.min_lr=0.0"])
        trainer = Trainer(cfg, output=tmp_path / schedule, progress=False)
        trainer.setup()
        rates[schedule] = [trainer.scheduler.lr_lambdas[0](step) for step in range(5)]
        trainer.cleanup()
    assert rates["constant"] == [1.0] * 5
    assert rates["cosine"][0] == 1.0 and rates["cosine"][4] == pytest.approx(0.0) and rates["cosine"][2] == pytest.approx(0.5)


def test_the_cosine_schedule_ends_at_min_lr(tmp_path):
    """min_lr is absolute; the scheduler's factor is its fraction of the peak."""
    cfg = load_recipe("tiny", ["train.max_steps=4", "train.warmup_epochs=0", "train.lr_schedule=cosine",
                               "train.min_lr=2e-4"])
    trainer = Trainer(cfg, output=tmp_path, progress=False)
    trainer.setup()
    assert trainer.scheduler.lr_lambdas[0](4) == pytest.approx(2e-4 / learning_rate(cfg.train))
    trainer.cleanup()
