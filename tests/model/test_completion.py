"""Completion: the known tokens stay bit-exact for every order, a hole determined by the known part
is filled far better than unconditional sampling fills it, and the causal order refuses a hole."""

import pytest
import torch
from helpers import tiny_model_config
from helpers.models import randomized

from carl.config import ModelConfig, from_dict
from carl.model import ContinuousAR
from carl.tokenizers.base import cell_mask

ORDERS = ("masked", "random", "causal")


def tiny(order: str) -> ContinuousAR:
    torch.manual_seed(0)
    return ContinuousAR(tiny_model_config(order=order)).eval()


@pytest.mark.parametrize("order", ORDERS)
def test_known_tokens_come_back_bit_exact(order):
    model = tiny(order)
    tokens = torch.randn(5, 8, 2)
    known = torch.zeros(5, 8, dtype=torch.bool)
    known[:, :3] = True  # a prefix: every order completes it
    known[3, :5] = True  # another count of known tokens: its own group
    out = model.complete_tokens(tokens, known, torch.arange(5) % 4, num_steps=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[known], tokens[known]) and torch.isfinite(out).all()
    assert not torch.equal(out[~known], tokens[~known])


@pytest.mark.parametrize("order", ["masked", "random"])
def test_masked_and_random_orders_fill_a_hole_and_keep_the_rest(order):
    model = tiny(order)
    data = torch.randn(3, 8, 2)
    known = torch.ones(8, 2, dtype=torch.bool)
    known[2:5] = False  # a hole in the middle, one mask for the whole batch
    out = model.complete(data, known, torch.arange(3), num_steps=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == data.shape and torch.equal(out[:, known], data[:, known])
    assert not torch.equal(out[:, 2:5], data[:, 2:5])


def test_the_causal_order_completes_a_prefix_and_refuses_a_hole():
    model = tiny("causal")
    data, prefix = torch.randn(2, 8, 2), torch.zeros(8, 2, dtype=torch.bool)
    prefix[:3] = True
    assert torch.equal(model.complete(data, prefix, torch.arange(2))[:, :3], data[:, :3])
    hole = torch.ones(8, 2, dtype=torch.bool)
    hole[3:5] = False
    with pytest.raises(ValueError, match="the causal order completes a prefix .* cannot fill a hole; train the model "
                                         "with order random or masked"):
        model.complete(data, hole, torch.arange(2))


def test_a_mask_that_does_not_fit_the_data_is_named():
    with pytest.raises(ValueError, match=r"known_mask of shape \(5, 2\) does not fit data of shape \(2, 8, 2\)"):
        tiny("masked").complete(torch.randn(2, 8, 2), torch.ones(5, 2, dtype=torch.bool))


def test_a_token_is_known_when_every_value_of_its_cell_is():
    known = torch.ones(2, 4, 6, dtype=torch.bool)
    known[0, 0, 0] = False  # one value of cell (0, 0) of sample 0
    cells = cell_mask(known, (2, 3))
    assert cells.tolist() == [[False] + [True] * 5, [True] * 6]
    with pytest.raises(ValueError, match=r"spatial shape \(4, 6\) does not split into a \(3, 3\) grid"):
        cell_mask(known, (3, 3))


def copies(batch: int, generator: torch.Generator) -> torch.Tensor:
    """Sequences of 8 copies of one random point: any known point determines the missing ones."""
    return torch.randn(batch, 1, 2, generator=generator).expand(batch, 8, 2).clone()


@pytest.mark.parametrize("order", [{"name": "masked", "mask_ratio_min": 0.3}, {"name": "random"}, {"name": "causal"}])
def test_a_determined_half_is_completed_far_better_than_sampled(order):
    """(The masked order trains on knowing up to 70% of the tokens here, so that half is in its plans.)"""
    torch.manual_seed(0)
    model = ContinuousAR(from_dict(ModelConfig, {
        "tokenizer": {"name": "patch", "shape": [8, 2], "patch": [1], "normalize": False},
        "conditioner": {"name": "none"}, "order": order,
        "backbone": {"width": 32, "depth": 2, "heads": 2, "dropout": 0.0, "attn_dropout": 0.0},
        "score": {"name": "energy", "depth": 2, "width": 32, "noise_dim": 4}}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(150):
        loss = model.loss({"data": copies(64, g)})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    truth = copies(200, torch.Generator().manual_seed(1))
    first_half = torch.zeros(8, 2, dtype=torch.bool)
    first_half[:4] = True
    completed = model.complete(truth, first_half, num_steps=4, generator=torch.Generator().manual_seed(2))
    sampled = model.generate(batch_size=200, num_steps=8, generator=torch.Generator().manual_seed(2))
    completed_error = (completed[:, 4:] - truth[:, 4:]).square().mean()
    sampled_error = (sampled[:, 4:] - truth[:, 4:]).square().mean()
    assert completed_error < 0.25 * sampled_error, (completed_error, sampled_error)


def half_known(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.randn(batch, 8, 2, generator=torch.Generator().manual_seed(5))
    known = torch.zeros(8, 2, dtype=torch.bool)
    known[::2] = True  # every other token: a set only the masked and random orders complete
    return data, known


@pytest.mark.parametrize("order", ["masked", "random"])
def test_completion_samples_in_eval_mode_and_gives_the_mode_back(order):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config(order=order, dropout=0.5, attn_dropout=0.5))  # dropout would show
    data, known = half_known()
    model.eval()
    expected = model.complete(data, known, torch.arange(3), num_steps=3, generator=torch.Generator().manual_seed(1))
    assert not model.training
    model.train()
    again = model.complete(data, known, torch.arange(3), num_steps=3, generator=torch.Generator().manual_seed(1))
    assert model.training and model.tokenizer.training  # given back as it was
    assert torch.equal(again, expected)
    tokens = model.complete_tokens(model.tokenizer.encode(data), known[:, 0].expand(3, 8), torch.arange(3), num_steps=3,
                                   generator=torch.Generator().manual_seed(1))
    assert model.training and torch.equal(tokens, model.tokenizer.encode(expected))


def test_completion_returns_tokens_and_puts_the_known_values_back_only_when_asked():
    model = tiny("masked")
    data, known = half_known()

    def run(**kwargs):
        return model.complete(data, known, torch.arange(3), num_steps=3, generator=torch.Generator().manual_seed(1), **kwargs)

    tokens = run(return_tokens=True)
    assert tokens.shape == (3, 8, 2) and torch.equal(tokens[:, ::2], model.tokenizer.encode(data)[:, ::2])
    torch.testing.assert_close(run(), model.tokenizer.decode(tokens))  # an exact tokenizer: nothing to put back
    # a tokenizer that reconstructs only approximately: the known values come back from the data
    decode = model.tokenizer.decode
    model.tokenizer.decode = lambda t: decode(t) + 1.0
    kept, raw = run(), run(keep_known=False)
    assert torch.equal(kept[:, known], data[:, known]) and torch.equal(kept[:, ~known], raw[:, ~known])
    torch.testing.assert_close(raw, decode(tokens) + 1.0)


def test_a_mask_may_be_one_for_the_batch_or_one_per_sample_of_any_integer_type():
    model = tiny("masked")
    data, known = half_known()
    expected = model.complete(data, known, torch.arange(3), num_steps=3, generator=torch.Generator().manual_seed(1))
    for mask in (known.expand(3, 8, 2), known.int(), known.tolist()):
        out = model.complete(data, mask, torch.arange(3), num_steps=3, generator=torch.Generator().manual_seed(1))
        assert torch.equal(out, expected)


@pytest.mark.parametrize("order", ["masked", "random"])
def test_completion_passes_the_condition_and_every_setting_on(order, capfd):
    model = randomized(tiny(order), scale=0.3)  # off the heads' constant init: the condition and settings show
    data, known = half_known()
    labels = torch.tensor([0, 1, 3])
    settings = {"num_steps": 2, "cfg": 2.5, "cfg_schedule": "constant", "temperature": 0.5}
    out = model.complete(data, known, labels, **settings, generator=torch.Generator().manual_seed(1))
    tokens = model.complete_tokens(model.tokenizer.encode(data), known[:, 0].expand(3, 8), labels, **settings,
                                   generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, model.tokenizer.decode(tokens))
    assert capfd.readouterr().err == ""  # no progress bar unless asked
    changes = [{"num_steps": 4}] if order == "masked" else []  # the random order takes one token per step
    changes += [{"cfg": 1.0}, {"cfg_schedule": "linear"}, {"temperature": 1.0}]
    for changed in changes:
        other = model.complete(data, known, labels, **{**settings, **changed}, generator=torch.Generator().manual_seed(1))
        assert not torch.equal(other, out), changed
    for other_labels, seed in ((torch.tensor([2, 2, 2]), 1), (labels, 2)):
        other = model.complete(data, known, other_labels, **settings, generator=torch.Generator().manual_seed(seed))
        assert not torch.equal(other, out), (other_labels, seed)


def test_completion_draws_a_progress_bar_only_when_asked(monkeypatch):
    from carl.model import completion

    asked, bar = [], completion.bar
    def spy(*args, progress, leave, **kw):
        asked.append((progress, leave))
        return bar(*args, progress=False, leave=leave, **kw)

    monkeypatch.setattr(completion, "bar", spy)
    model = tiny("masked")
    data, known = half_known()
    model.complete(data, known, torch.arange(3), num_steps=2)
    model.complete(data, known, torch.arange(3), num_steps=2, progress=True)
    assert asked == [(False, False), (True, False)]  # and the bar goes away when the completion ends
