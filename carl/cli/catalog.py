"""``carl recipes`` and ``carl plugins``: what is shipped and installed."""

from __future__ import annotations

from typing import Annotated

import typer

from carl.cli.program import app

recipes_app = typer.Typer(help="List and show the shipped recipes.", no_args_is_help=True)
plugins_app = typer.Typer(help="Installed plugins and what they provide.")
app.add_typer(recipes_app, name="recipes")
app.add_typer(plugins_app, name="plugins", invoke_without_command=True)


@recipes_app.command("list")
def recipes_list() -> None:
    """List the shipped recipes (from carl and every plugin)."""
    from carl.plugins import recipe_files

    for name, path in recipe_files().items():
        header = next((line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        typer.echo(f"{name:20s} {header}")


@recipes_app.command("show")
def recipes_show(name: Annotated[str, typer.Argument(help="A shipped recipe name or a recipe file.")]) -> None:
    """Print a recipe's file, after checking that it validates."""
    from carl.config import load_recipe, resolve_recipe_path

    load_recipe(name)
    typer.echo(resolve_recipe_path(name).read_text())


@plugins_app.callback()
def plugins_list(ctx: typer.Context) -> None:
    """List installed plugins, their versions and what each registers."""
    if ctx.invoked_subcommand is not None:
        return
    from carl.plugins import plugin_infos

    for info in plugin_infos():
        status = f"  FAILED TO LOAD: {info.error}" if info.error else ""
        typer.echo(f"{info.name} {info.version} ({info.module}){status}")
        for kind, names in sorted(info.provides.items()):
            typer.echo(f"    {kind}: {', '.join(names)}")
