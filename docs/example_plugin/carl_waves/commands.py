"""``carl waves-check``: a command the plugin adds to carl's command line."""

from typing import Annotated

import typer


def check(
    model: Annotated[str, typer.Argument(help="A model folder, a checkpoint folder or a Hub repo id.")],
    per_class: Annotated[int, typer.Option("--per-class", help="Waves generated per class.")] = 32,
) -> None:
    """Generate waves of every class and print the share at the right frequency."""
    from carl.model import open_model  # imported when the command runs: `carl --help` stays fast
    from carl_waves.metrics import FrequencyAccuracy, FrequencyConfig

    loaded = open_model(model)
    if loaded.recipe is None:
        raise typer.BadParameter("the model has no recipe.yaml (no data settings)", param_hint="MODEL")
    scores = FrequencyAccuracy(FrequencyConfig(per_class=per_class)).compute(loaded.model, loaded.recipe)
    typer.echo(f"frequency accuracy: {scores['frequency_accuracy']:.3f}")
