"""Plugin discovery and the name -> class registries.

``load_plugins()`` builds one pluggy ``PluginManager("carl")``, loads the modules of the
``carl`` entry-point group (restricted by ``CARL_PLUGINS=name1,name2``; an empty value loads
none), then carl's own built-ins, and fills one :class:`Registry` per kind by calling every
``register_*`` hook with a callback that remembers which plugin registered what.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy

from carl import hookspecs

ENTRY_POINT_GROUP = "carl"
BUILTIN_MODULES = (
    "carl.tokenizers", "carl.orders", "carl.scores", "carl.conditioners", "carl.data", "carl.metrics", "carl.recipes",
)
KINDS = {
    "tokenizers": "tokenizer",
    "orders": "order",
    "scores": "scoring rule",
    "conditioners": "conditioner",
    "datasets": "dataset",
    "metrics": "metric",
    "recipes": "recipe folder",
    "pretrained": "pretrained folder",
}


class CarlError(Exception):
    """An error caused by user input; the CLI prints it as one line."""


class UnknownComponentError(CarlError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class PluginInfo:
    name: str
    version: str
    module: str
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    distribution: str | None = None  # what `pip install` takes


class Registry:
    """Names of one kind of component, each mapped to an object and the plugin that registered it."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}
        self._owners: dict[str, str] = {}

    def register(self, name: str, obj: Any, plugin: str) -> None:
        if name in self._items:
            raise CarlError(
                f"{KINDS[self.kind]} '{name}' is registered twice: by plugin '{self._owners[name]}' and by plugin '{plugin}'"
            )
        self._items[name] = obj
        self._owners[name] = plugin

    def get(self, name: str) -> Any:
        if name not in self._items:
            raise UnknownComponentError(
                f"unknown {KINDS[self.kind]} '{name}'; available: {', '.join(self.names()) or '(none)'}"
            )
        return self._items[name]

    def owner(self, name: str) -> str:
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, Any]]:
        return sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items


class _State:
    manager: pluggy.PluginManager | None = None
    registries: dict[str, Registry] = {}
    infos: dict[str, PluginInfo] = {}


def _allowed_plugins() -> set[str] | None:
    value = os.environ.get("CARL_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _load_entry_points(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> None:
    allowed = _allowed_plugins()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        version = ep.dist.version if ep.dist is not None else "?"
        info = PluginInfo(name=ep.name, version=version, module=ep.value, distribution=ep.dist.name if ep.dist else None)
        infos[ep.name] = info
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken plugin must not take the others down
            info.error = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"carl plugin '{ep.name}' ({ep.value}) failed to load: {info.error}", stacklevel=2)


def _fill_registries(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> dict[str, Registry]:
    registries = {kind: Registry(kind) for kind in KINDS}
    for kind, registry in registries.items():
        hook = getattr(pm.hook, f"register_{kind}")
        for impl in hook.get_hookimpls():
            plugin = impl.plugin_name

            def register(name: str, obj: Any, _plugin: str = plugin, _registry: Registry = registry) -> None:
                _registry.register(name, obj, _plugin)
                infos[_plugin].provides.setdefault(kind, []).append(name)

            impl.function(register=register)
    return registries


def load_plugins(force: bool = False) -> pluggy.PluginManager:
    """Discover plugins and fill the registries (idempotent unless ``force``)."""
    if _State.manager is not None and not force:
        return _State.manager
    pm = pluggy.PluginManager("carl")
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    _load_entry_points(pm, infos)
    from carl import __version__

    for module_name in BUILTIN_MODULES:
        pm.register(importlib.import_module(module_name), name=module_name)
        infos[module_name] = PluginInfo(name=module_name, version=__version__, module=module_name)
    pm.check_pending()
    _State.registries = _fill_registries(pm, infos)
    _State.infos = infos
    _State.manager = pm
    return pm


def registry(kind: str) -> Registry:
    """The registry of one kind: ``tokenizers``, ``orders``, ``scores``, ``conditioners``, ``datasets``, ``recipes``."""
    load_plugins()
    return _State.registries[kind]


def plugin_infos() -> list[PluginInfo]:
    load_plugins()
    return list(_State.infos.values())


def plugin_of(kind: str, name: str) -> PluginInfo:
    """The plugin that registered ``name`` in ``kind``."""
    return _State.infos[registry(kind).owner(name)]


def recipe_files() -> dict[str, Path]:
    """Every shipped recipe: name (file stem) -> path, across all registered recipe folders."""
    recipes: dict[str, Path] = {}
    for _, folder in registry("recipes").items():
        for path in sorted(Path(folder).glob("*.yaml")):
            recipes.setdefault(path.stem, path)
    return recipes


def pretrained_folders() -> dict[str, Path]:
    """Every shipped pretrained folder (a tokenizer or model folder inside a package): name -> path."""
    return {name: Path(folder) for name, folder in registry("pretrained").items()}


def register_commands(app: Any) -> None:
    """Let every plugin add its CLI commands to ``app`` (once per app)."""
    if getattr(app, "_carl_plugin_commands", False):
        return
    load_plugins().hook.register_commands(app=app)
    app._carl_plugin_commands = True
