"""Generation orders: causal, random, masked."""

from carl.hookspecs import hookimpl
from carl.orders.base import Order, Plan, random_permutations
from carl.orders.causal import CausalOrder
from carl.orders.masked import MaskedOrder
from carl.orders.random import RandomOrder

__all__ = ["Order", "Plan", "random_permutations", "CausalOrder", "MaskedOrder", "RandomOrder"]


@hookimpl
def register_orders(register):
    register("causal", CausalOrder)
    register("random", RandomOrder)
    register("masked", MaskedOrder)
