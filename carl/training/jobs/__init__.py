"""Kinds of training run: an AR model (:mod:`carl.training.jobs.ar`) or a tokenizer
(:mod:`carl.training.jobs.tokenizer`). A new kind is a new job file registered here."""

from carl.config import RecipeConfig, TokenizerRecipeConfig
from carl.training.jobs.ar import ARJob
from carl.training.jobs.base import Job
from carl.training.jobs.tokenizer import TokenizerJob

JOBS: dict[type, type[Job]] = {RecipeConfig: ARJob, TokenizerRecipeConfig: TokenizerJob}


def job_for(cfg) -> Job:
    """The job a validated recipe describes."""
    job = JOBS.get(type(cfg))
    if job is None:
        raise TypeError(f"no training job for a {type(cfg).__name__}")
    return job(cfg)


__all__ = ["ARJob", "Job", "TokenizerJob", "job_for"]
