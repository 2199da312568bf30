"""The built-in data (:mod:`carl.data`): toy sequences drawn as paths on the ring."""

import numpy as np
import torch

from carl.data import ToyConfig, ToySequences


def test_toy_sequences_are_drawn_as_paths_on_the_ring():
    source = ToySequences(ToyConfig(num_samples=8))
    data = source.dataset()[:3]["data"]
    pictures = source.render(data)
    assert pictures.shape == (3, 120, 120, 3) and pictures.dtype == np.uint8
    assert (pictures < 200).any(axis=-1).mean() > 0.01  # something is drawn, not a blank tile
    assert not np.array_equal(pictures[0], pictures[1])  # each tile is its own sequence
    np.testing.assert_array_equal(source.render(data[:1])[0], pictures[0])  # deterministic
    assert source.render(torch.zeros(1, 8, 2)).shape == (1, 120, 120, 3)
