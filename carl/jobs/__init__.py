"""Kinds of training run: an AR model (:mod:`carl.jobs.ar`) or a tokenizer (:mod:`carl.jobs.tokenizer`)."""

from carl.config import RecipeConfig, TokenizerRecipeConfig
from carl.jobs.base import Job


def job_for(cfg) -> Job:
    """The job a validated recipe describes."""
    if isinstance(cfg, TokenizerRecipeConfig):
        from carl.jobs.tokenizer import TokenizerJob

        return TokenizerJob(cfg)
    if isinstance(cfg, RecipeConfig):
        from carl.jobs.ar import ARJob

        return ARJob(cfg)
    raise TypeError(f"no training job for a {type(cfg).__name__}")


__all__ = ["Job", "job_for"]
