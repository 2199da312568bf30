"""The hook specifications every carl plugin implements a subset of.

Each ``register_*`` hook receives a ``register(name, obj)`` callback, except
``register_commands``, which receives the typer ``app`` of the ``carl`` command. carl's own
built-ins register through these very hooks, so a third-party plugin is a first-class citizen.
A plugin whose hook raises is marked failed (``carl plugins`` says why) and the others keep
working. ``docs/plugins.md`` is a complete example.
"""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("carl")
hookimpl = HookimplMarker("carl")


@hookspec
def register_tokenizers(register):
    """Register Tokenizer subclasses: ``register("patch", PatchTokenizer)``."""


@hookspec
def register_orders(register):
    """Register Order subclasses: ``register("masked", MaskedOrder)``."""


@hookspec
def register_scores(register):
    """Register ScoringRule subclasses: ``register("energy", EnergyScore)``."""


@hookspec
def register_conditioners(register):
    """Register Conditioner subclasses: ``register("class", ClassConditioner)``."""


@hookspec
def register_datasets(register):
    """Register DataSource subclasses that training reads: ``register("images", ImageData)``."""


@hookspec
def register_metrics(register):
    """Register Metric subclasses for evaluation during training: ``register("fid", FID)``."""


@hookspec
def register_recipes(register):
    """Register folders of recipe YAML files: ``register("image_ear", Path(...))``."""


@hookspec
def register_pretrained(register):
    """Register folders shipped inside a package (a trained tokenizer, say) under a name that
    recipes can use as a path: ``register("mnist-ae", Path(...))``."""


@hookspec
def register_commands(app):
    """Add typer commands or sub-apps to the ``carl`` CLI ``app``."""
