"""carl hook implementations of the image plugin (only hooks here; the code lives beside it)."""

from pathlib import Path

from carl.hookspecs import hookimpl


@hookimpl
def register_tokenizers(register):
    from carl_image_ear.kl16 import KL16Tokenizer

    register("kl16", KL16Tokenizer)


@hookimpl
def register_datasets(register):
    from carl_image_ear.images import ImageData

    register("images", ImageData)


@hookimpl
def register_recipes(register):
    register("image_ear", Path(__file__).parent / "recipes")


@hookimpl
def register_commands(app):
    from typing import Annotated

    import typer

    convert = typer.Typer(help="Bring official checkpoints (EAR, MAR's KL-16) into carl.", no_args_is_help=True)

    @convert.command("ear")
    def ear(
        checkpoint: Annotated[Path, typer.Argument(help="An official EAR checkpoint (checkpoint-last.pth).")],
        output: Annotated[Path, typer.Argument(help="The carl model folder to write.")],
        vae: Annotated[str, typer.Option("--vae", help="MAR's KL-16 weights: kl16.ckpt, .safetensors or a Hub reference.")],
        raw: Annotated[bool, typer.Option("--raw", help="Convert the raw weights instead of the EMA ones.")] = False,
    ) -> None:
        """Convert an official EAR checkpoint into a carl model folder (for `carl sample`)."""
        from carl_image_ear.convert import convert_ear

        typer.echo(f"model folder: {convert_ear(checkpoint, output, vae, use_ema=not raw)}")

    @convert.command("kl16")
    def kl16(
        checkpoint: Annotated[str, typer.Argument(help="MAR's kl16.ckpt (or a .safetensors file or Hub reference).")],
        output: Annotated[Path, typer.Argument(help="Folder for kl16.safetensors.")],
    ) -> None:
        """Check MAR's KL-16 weights strictly and write them as safetensors."""
        from carl_image_ear.convert import convert_kl16

        typer.echo(f"tokenizer weights: {convert_kl16(checkpoint, output)}")

    app.add_typer(convert, name="convert")
