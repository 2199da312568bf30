"""A run shorter than its warm-up says so before the first step."""

import carl


def test_a_run_within_its_warm_up_warns(tmp_path, capsys):
    carl.train("tiny", ["train.max_steps=4", "train.warmup_steps=10", "train.tracker=none"], output=tmp_path / "a",
               progress=False)
    out = capsys.readouterr().out
    assert ("carl: warning: the learning-rate warm-up (10 steps: train.warmup_epochs 0, train.warmup_steps 10) takes "
            "4 of the run's 4 steps, so the rate never reaches its peak") in out
    carl.train("tiny", ["train.max_steps=40", "train.warmup_steps=10", "train.tracker=none"], output=tmp_path / "b",
               progress=False)
    assert "warm-up" not in capsys.readouterr().out
