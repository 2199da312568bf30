"""Plans and permutations (:mod:`carl.orders.base`): the sorted known and target positions, and
random permutations drawn whatever torch's default device."""

import pytest
import torch

from carl.orders import Plan, random_permutations


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
