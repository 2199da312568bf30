"""Strictly proper scoring rules, each a distribution head with its loss and sampler."""

from carl.hookspecs import hookimpl
from carl.scores.base import Guidance, ScoringRule
from carl.scores.energy import EnergyScore, EnergyScoreConfig, energy_score

__all__ = ["Guidance", "ScoringRule", "EnergyScore", "EnergyScoreConfig", "energy_score"]


@hookimpl
def register_scores(register):
    register("energy", EnergyScore)
