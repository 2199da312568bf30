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
def register_metrics(register):
    from carl_image_ear.evaluate import FID

    register("fid", FID)


@hookimpl
def register_recipes(register):
    register("image_ear", Path(__file__).parent / "recipes")


@hookimpl
def register_pretrained(register):
    for folder in sorted((Path(__file__).parent / "pretrained").glob("*/config.json")):
        register(folder.parent.name, folder.parent)  # mnist-ae: made by the mnist-ae recipe


@hookimpl
def register_commands(app):
    from typing import Annotated, Optional

    import typer

    convert = typer.Typer(help="Bring official checkpoints (EAR, MAR, MAR's KL-16) into carl.", no_args_is_help=True)

    def official(kind: str):
        def command(
            checkpoint: Annotated[Path, typer.Argument(help=f"An official {kind.upper()} checkpoint (checkpoint-last.pth).")],
            output: Annotated[Path, typer.Argument(help="The carl model folder to write.")],
            vae: Annotated[str, typer.Option("--vae", help="MAR's KL-16 weights: kl16.ckpt, .safetensors or a Hub reference.")],
            raw: Annotated[bool, typer.Option("--raw", help="Convert the raw weights instead of the EMA ones.")] = False,
            heads: Annotated[Optional[int], typer.Option("--heads", help="Attention heads, for a checkpoint of an unofficial width without training args.")] = None,
        ) -> None:
            from carl_image_ear.convert import convert_official

            typer.echo(f"model folder: {convert_official(kind, checkpoint, output, vae, use_ema=not raw, heads=heads)}")

        command.__doc__ = f"Convert an official {kind.upper()} checkpoint into a carl model folder (for `carl sample`)."
        convert.command(kind)(command)

    official("ear")
    official("mar")

    @convert.command("kl16")
    def kl16(
        checkpoint: Annotated[str, typer.Argument(help="MAR's kl16.ckpt (or a .safetensors file or Hub reference).")],
        output: Annotated[Path, typer.Argument(help="Folder for kl16.safetensors.")],
    ) -> None:
        """Check MAR's KL-16 weights strictly and write them as safetensors."""
        from carl_image_ear.convert import convert_kl16

        typer.echo(f"tokenizer weights: {convert_kl16(checkpoint, output)}")

    app.add_typer(convert, name="convert")


@hookimpl(specname="register_commands")
def register_eval_command(app):
    from typing import Annotated, Optional

    import typer

    @app.command("eval")
    def evaluate(
        checkpoint: Annotated[str, typer.Argument(help="A model folder or a Hub repo id.")],
        reference: Annotated[str, typer.Option("--reference", help="Real-image statistics (.npz, mu/sigma) or a folder of real images.")],
        num: Annotated[int, typer.Option("--num", "-n", help="Images to generate (class-balanced).")] = 50_000,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Images generated per batch.")] = 250,
        steps: Annotated[Optional[int], typer.Option("--steps", help="Generation steps (default: the recipe's).")] = None,
        cfg: Annotated[Optional[float], typer.Option("--cfg", help="Classifier-free guidance scale (default: the recipe's).")] = None,
        temperature: Annotated[Optional[float], typer.Option("--temperature", help="Sampling temperature (default: the recipe's).")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the generation.")] = 0,
        inception_weights: Annotated[Optional[str], typer.Option("--inception-weights", help="Local Inception weights for offline use.")] = None,
        precision_recall: Annotated[bool, typer.Option("--prc", help="Also compute precision and recall.")] = False,
        out: Annotated[Path, typer.Option("--out", help="Folder for the grid and metrics.json.")] = Path("eval"),
        record: Annotated[bool, typer.Option("--record/--no-record", help="Add the figures to the model folder's "
                                             "results.json and card (a local model folder only).")] = True,
    ) -> None:
        """Generate class-balanced images and report FID / IS (torch-fidelity); the figures, with their
        settings, go into the model folder's results.json and card."""
        import json

        from carl.model import load_model
        from carl_image_ear.evaluate import EvalSettings, fidelity_metrics, generate_images, save_eval_grid

        model, recipe = load_model(checkpoint)
        s = recipe.sample
        settings = EvalSettings(
            num_images=num, batch_size=batch_size, num_steps=steps or s.num_steps, cfg=s.cfg if cfg is None else cfg,
            cfg_schedule=s.cfg_schedule, temperature=s.temperature if temperature is None else temperature, seed=seed,
        )
        device = "cuda" if __import__("torch").cuda.is_available() else "cpu"
        images = generate_images(model.to(device), settings)
        grid = save_eval_grid(images, out / "grid.png")
        metrics = fidelity_metrics(images, reference, inception_weights=inception_weights, precision_recall=precision_recall)
        (out / "metrics.json").write_text(json.dumps({"settings": settings.__dict__, **metrics}, indent=2))
        typer.echo(" | ".join(f"{k} {v:.4g}" for k, v in metrics.items()) + f" | grid {grid}")
        if record and Path(checkpoint).is_dir() and (Path(checkpoint) / "config.json").is_file():
            from carl.model.folder import record_results

            how = settings.describe(reference)
            written = record_results(checkpoint, {f"{name} ({how})": round(value, 4) for name, value in metrics.items()})
            typer.echo(f"recorded in {written} and the model card")
