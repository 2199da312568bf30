"""`benchmarks/mnist_quality.py`: the floors it prints beside FD(real, real) (real digits the
classifier never trained on, as they are and through the model's tokenizer), and distances over
fewer digits than a reference half."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "mnist_quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("mnist_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cnn(quality):
    return quality.train_classifier(epochs=2)


class Exact(nn.Module):
    """A tokenizer that gives the data back: its floors are the real digits' own."""

    def encode(self, x):
        return x.flatten(1)

    def decode(self, tokens):
        return tokens.view(-1, 1, 28, 28)


class Blank(Exact):
    """A tokenizer that loses everything: decodes a black square."""

    def decode(self, tokens):
        return torch.zeros(len(tokens), 1, 28, 28)


class Model(nn.Module):
    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.weight = nn.Parameter(torch.zeros(1))  # the device of the model


def test_an_exact_tokenizer_reaches_the_real_digits_floor(quality, cnn):
    floors = quality.unseen_floors(Model(Exact()), cnn, num=400)
    assert floors["reconstructed"] == floors["real"]
    assert floors["real"]["accuracy"] > 0.8


def test_a_lossy_tokenizer_raises_the_floor(quality, cnn):
    floors = quality.unseen_floors(Model(Blank()), cnn, num=400)
    assert floors["reconstructed"]["accuracy"] < 0.3  # one class for every digit
    assert floors["reconstructed"]["fd"] > 3 * floors["real"]["fd"]


def test_unseen_digits_sit_farther_than_the_classifiers_own(quality, cnn):
    """Why the floors exist: FD(real, real) compares two halves of the digits the classifier
    trained on; as many digits it never saw sit farther from the same half."""
    half_a, half_b = quality.reference_halves(cnn, "heldout")
    own = quality.frechet_distance(half_b[:400], half_a[:400])
    unseen = quality.unseen_floors(Model(Exact()), cnn, num=400)["real"]["fd"]
    assert unseen > own


def test_the_floor_digits_are_not_the_classifiers(quality):
    """The unseen digits come from the reference's complement, never from the reference itself."""
    reference, _ = quality.reference_digits("heldout")
    unseen, _ = quality.reference_digits("heldout", complement=True)
    seen = {image.tobytes() for image in reference}
    assert not any(image.tobytes() in seen for image in unseen[:2000])


def test_fewer_digits_than_a_half_still_hold_every_digit(quality, cnn):
    """Regression: the reference is grouped by label, and distances over fewer samples than a
    half (``--per-class 50``) compared with its prefix, the digits 0 to 4 only (FD ~60 times too large)."""
    _, labels = quality.reference_digits("heldout")
    assert set(quality.mixed(torch.from_numpy(labels[0::2]), 400, seed=0).tolist()) == set(range(10))
    fewer = quality.unseen_floors(Model(Exact()), cnn, num=400)["real"]["fd"]
    full = quality.unseen_floors(Model(Exact()), cnn, num=1000)["real"]["fd"]
    assert fewer < 5 * full  # a smaller sample's bias, not a missing half of the classes
