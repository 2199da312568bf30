"""``carl tokenizer``: inspect tokenizer folders and compute a tokenizer's latent normalisation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from carl.cli.program import app
from carl.errors import CarlError
from carl.tokenizers.base import FIT_SAMPLES

tokenizer_app = typer.Typer(help="Tokenizers: train one with `carl train <tokenizer recipe>`; inspect and rescale here.",
                            no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")


@tokenizer_app.command("scale")
def scale(
    recipe: Annotated[str, typer.Argument(help="A recipe (tokenizer or AR) whose tokenizer and training data are measured.")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="Dotted overrides: model.tokenizer.weights=kl16.ckpt")] = None,
    samples: Annotated[int, typer.Option("--samples", help="Training items to measure.")] = FIT_SAMPLES,
    write: Annotated[bool, typer.Option("--write", help="Store the result in the tokenizer folder the recipe loads (`path`).")] = False,
) -> None:
    """Measure the tokens of RECIPE's tokenizer on its training data and give the latent
    normalisation that makes them zero-mean and unit-variance (MAR's 0.2325 for KL-16 on ImageNet)."""
    from carl.config import TokenizerRecipeConfig, load_recipe
    from carl.tokenizers.base import prepare_tokenizer
    from carl.tokenizers.normalize import normalize

    cfg = load_recipe(recipe, overrides or [])
    component = cfg.tokenizer if isinstance(cfg, TokenizerRecipeConfig) else cfg.model.tokenizer
    dataset = cfg.data.build("datasets").dataset("train")
    tokenizer = prepare_tokenizer(component.build("tokenizers"), dataset, samples)
    try:
        stats, options = normalize(tokenizer, dataset, samples=samples)
    except NotImplementedError as exc:
        raise CarlError(f"tokenizer '{component.name}': {exc}") from exc
    typer.echo(f"measured {stats.describe()}")
    if options is not None:  # normalisation held in the config (KL-16's scale)
        typer.echo("set in the recipe: " + " ".join(f"model.tokenizer.{k}={v:.6g}" for k, v in options.items()))
        return
    typer.echo(f"latent shift {_fmt(tokenizer.latent_shift)}, scale {_fmt(tokenizer.latent_scale)}")
    path = getattr(tokenizer.config, "path", None)
    if write:
        if path is None or not Path(path).is_dir():
            raise CarlError("--write needs a recipe whose tokenizer loads a local tokenizer folder (`path`)")
        from carl.tokenizers.pretrained import save_tokenizer_weights

        typer.echo(f"stored in {save_tokenizer_weights(tokenizer, Path(path))}")
    elif path is not None:
        typer.echo("pass --write to store it in the tokenizer folder")


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values.tolist()) + "]"
