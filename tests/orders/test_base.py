"""Plans and permutations (:mod:`carl.orders.base`): the sorted known and target positions, and
random permutations drawn whatever torch's default device."""

import pytest
import torch

from carl.orders import CausalOrder, MaskedOrder, Plan, RandomOrder, random_permutations


def test_plan_positions_list_known_and_target_positions_in_ascending_order():
    order = torch.tensor([[3, 0, 2, 1, 4], [1, 4, 0, 3, 2]])
    plan = Plan(order, order.argsort(-1) < 2, num_known=2)  # rows know their first two positions
    assert plan.positions(known=True).tolist() == [[0, 3], [1, 4]]
    assert plan.positions(known=False).tolist() == [[1, 2, 4], [0, 2, 3]]


def test_plan_positions_need_the_same_known_count_in_every_row():
    plan = Plan(torch.arange(4).expand(2, 4), torch.tensor([[True, False, False, False], [True, True, False, False]]))
    with pytest.raises(ValueError, match="^this plan does not know the same number of positions in every row"):
        plan.positions(known=True)


@pytest.mark.parametrize("seeded", [False, True])
def test_random_permutations_ignore_the_default_device(seeded):
    expected = random_permutations(4, 9, torch.Generator().manual_seed(0), "cpu")
    generator = torch.Generator().manual_seed(0) if seeded else None
    with torch.device("meta"):  # noise is drawn on the generator's device, or the one asked for
        perms = random_permutations(4, 9, generator, "cpu")
    assert perms.device.type == "cpu"
    assert torch.equal(perms.sort(-1).values, torch.arange(9).expand(4, 9))
    if seeded:
        assert torch.equal(perms, expected)


def known_mask(batch: int = 4, seq_len: int = 9) -> torch.Tensor:
    known = torch.zeros(batch, seq_len, dtype=torch.bool)
    known[:, [1, 4, 6]] = True  # every row knows three positions, the same ones
    return known


def check_completion_order(order: torch.Tensor, known: torch.Tensor) -> None:
    assert order.shape == known.shape and order.device.type == "cpu"
    assert torch.equal(order.sort(-1).values, torch.arange(known.shape[1]).expand_as(order))  # permutations
    assert order[:, :3].tolist() == [[1, 4, 6]] * len(order)  # the known positions first, ascending


def test_the_completion_order_puts_the_known_positions_first_then_the_rest_at_random():
    known = known_mask(batch=6)
    order = MaskedOrder().completion_order(known, torch.Generator().manual_seed(0))
    check_completion_order(order, known)
    assert len({tuple(row) for row in order[:, 3:].tolist()}) > 1  # each row draws its own order of the unknowns
    check_completion_order(MaskedOrder().completion_order(known), known)  # without a generator too


def test_the_completion_order_follows_its_generator():
    known = known_mask()
    first = MaskedOrder().completion_order(known, torch.Generator().manual_seed(3))
    assert torch.equal(first, MaskedOrder().completion_order(known, torch.Generator().manual_seed(3)))
    others = [MaskedOrder().completion_order(known, torch.Generator().manual_seed(s)) for s in range(4, 8)]
    assert any(not torch.equal(first, o) for o in others)


@pytest.mark.parametrize("order_class", [MaskedOrder, RandomOrder, CausalOrder])
@pytest.mark.parametrize("seeded", [False, True])
def test_completion_orders_ignore_the_default_device(order_class, seeded):
    known = torch.zeros(4, 9, dtype=torch.bool)
    known[:, :3] = True  # a prefix: every order completes it
    generator = torch.Generator().manual_seed(0) if seeded else None
    expected = order_class().completion_order(known, torch.Generator().manual_seed(0))
    with torch.device("meta"):  # the mask's device (and the generator's for the noise), never the default
        order = order_class().completion_order(known, generator)
    assert order.device.type == "cpu" and torch.equal(order.sort(-1).values, torch.arange(9).expand(4, 9))
    assert torch.equal(order[:, :3], torch.arange(3).expand(4, 3))
    if seeded:
        assert torch.equal(order, expected)


def test_the_completion_order_is_on_the_mask_s_device_whatever_the_generator_s():
    known = known_mask().to("meta")  # a mask on another device than the generator (meta stands in for a GPU)
    order = MaskedOrder().completion_order(known, torch.Generator().manual_seed(0))
    assert order.device.type == "meta" and order.shape == known.shape
