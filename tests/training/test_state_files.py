"""Optimizer and scheduler states in safetensors files (:mod:`carl.training.state_files`): round
trips without pickle, and a pickle under a safetensors name is refused, never run."""

import pytest
import torch

from carl.errors import StateFileError
from carl.training.state_files import load_tree, save_tree

from helpers.pickles import Payload


def test_state_files_round_trip_without_pickle(tmp_path):
    tree = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
            "param_groups": [{"betas": (0.9, 0.95), "lr": 1e-3, "params": [0], "foreach": None}]}
    save_tree(tmp_path / "s.safetensors", tree)
    back = load_tree(tmp_path / "s.safetensors")
    assert back["param_groups"] == tree["param_groups"] and list(back["state"]) == [0]
    torch.testing.assert_close(back["state"][0]["exp_avg"], tree["state"][0]["exp_avg"], rtol=0, atol=0)
    torch.save(Payload(tmp_path / "ran"), tmp_path / "p.safetensors")  # a pickle under a safetensors name
    with pytest.raises(StateFileError, match="cannot read .*p.safetensors"):
        load_tree(tmp_path / "p.safetensors")
    assert not (tmp_path / "ran").exists()
