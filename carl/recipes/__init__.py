"""carl's own recipes (modality-free); plugins register their folders through the same hook."""

from pathlib import Path

from carl.hookspecs import hookimpl


@hookimpl
def register_recipes(register):
    register("carl", Path(__file__).parent)
