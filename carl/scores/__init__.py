"""Strictly proper scoring rules, each a distribution head with its loss and sampler."""

from carl.hookspecs import hookimpl
from carl.scores.base import Guidance, ScoringRule
from carl.scores.crps import CRPSScore, crps
from carl.scores.diffusion import DiffusionScore, DiffusionScoreConfig
from carl.scores.energy import EnergyScore, EnergyScoreConfig, energy_score
from carl.scores.flow import FlowScore, FlowScoreConfig
from carl.scores.kernel import KernelScore, KernelScoreConfig
from carl.scores.log_score import GaussianScore, GaussianScoreConfig, MixtureScore, MixtureScoreConfig
from carl.scores.sample_based import SampleScore, SampleScoreConfig

__all__ = [
    "Guidance", "ScoringRule", "SampleScore", "SampleScoreConfig",
    "EnergyScore", "EnergyScoreConfig", "energy_score", "CRPSScore", "crps", "KernelScore", "KernelScoreConfig",
    "GaussianScore", "GaussianScoreConfig", "MixtureScore", "MixtureScoreConfig",
    "DiffusionScore", "DiffusionScoreConfig", "FlowScore", "FlowScoreConfig",
]


@hookimpl
def register_scores(register):
    register("energy", EnergyScore)
    register("crps", CRPSScore)
    register("kernel", KernelScore)
    register("gaussian", GaussianScore)
    register("gmm", MixtureScore)
    register("diffusion", DiffusionScore)
    register("flow", FlowScore)
