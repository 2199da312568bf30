"""Sample grids (:mod:`carl.model.samples`): a plugin's render that breaks its contract is named."""

import pytest

from carl.api import train
from carl.config import load_recipe


def test_a_broken_render_is_named_and_the_model_folder_is_already_saved(tmp_path, monkeypatch):
    """A plugin's render that breaks its contract fails after training, naming the contract;
    the model folder was written before anything was drawn."""
    from carl.data import ToySequences
    from carl.model import open_model
    from carl.errors import CarlError

    monkeypatch.setattr(ToySequences, "render", lambda self, data: data.numpy(), raising=False)  # float (B, 8, 2)
    cfg = load_recipe("tiny", ["train.max_steps=2", "train.checkpoint_every=null"])
    with pytest.raises(CarlError, match=r"ToySequences.render must return uint8 pictures \(B, H, W, 3\) with B = 16"):
        train(cfg, output=tmp_path, progress=False)
    assert open_model(tmp_path).model is not None and (tmp_path / "README.md").exists()
