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

from carl import errors, hookspecs
from carl.version import __version__

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
            raise errors.CarlError(
                f"{KINDS[self.kind]} '{name}' is registered twice: by plugin '{self._owners[name]}' and by plugin '{plugin}'"
            )
        self._items[name] = obj
        self._owners[name] = plugin

    def get(self, name: str) -> Any:
        if name not in self._items:
            raise errors.UnknownComponentError(
                f"unknown {KINDS[self.kind]} '{name}'; available: {', '.join(self.names()) or '(none)'}"
            )
        return self._items[name]

    @staticmethod
    def clash(registries: dict[str, "Registry"], items: list[tuple[str, str, Any]], plugin: str) -> str | None:
        """Why ``plugin`` cannot register ``items`` (a name already taken, or given twice), or None."""
        seen: set[tuple[str, str]] = set()
        for kind, name, _ in items:
            if name in registries[kind]:
                return f"{KINDS[kind]} '{name}' is registered twice: by plugin '{registries[kind].owner(name)}' and by plugin '{plugin}'"
            if (kind, name) in seen:
                return f"{KINDS[kind]} '{name}' is registered twice by plugin '{plugin}'"
            seen.add((kind, name))
        return None

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
    warned: set[tuple[str, str]] = set()  # (plugin, reason) already said in this process


def _allowed_plugins() -> set[str] | None:
    value = os.environ.get("CARL_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _fail(info: PluginInfo, reason: str) -> None:
    """Mark a plugin failed (the first reason is kept) and say so once per process: plugins are
    loaded again (``load_plugins(force=True)``), but a user needs to hear it once; ``carl
    plugins`` shows every failure in full."""
    if info.error is None:
        info.error = reason
        if (info.name, reason) not in _State.warned:
            _State.warned.add((info.name, reason))
            warnings.warn(f"carl plugin '{info.name}' ({info.module}) failed to load: {reason} (see `carl plugins`)",
                          stacklevel=3)


def _load_entry_points(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> None:
    allowed = _allowed_plugins()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        version = ep.dist.version if ep.dist is not None else "?"
        info = PluginInfo(name=ep.name, version=version, module=ep.value, distribution=ep.dist.name if ep.dist else None)
        if ep.name in infos:  # two distributions claim one plugin name: the first one keeps it
            _fail(info, f"the plugin name '{ep.name}' is taken by {infos[ep.name].module}")
            continue
        infos[ep.name] = info
        try:
            pm.register(ep.load(), name=ep.name)
            pm.check_pending()  # a hook with a misspelt name fails its own plugin, not carl
        except Exception as exc:  # a broken plugin must not take the others down
            if pm.has_plugin(ep.name):
                pm.unregister(name=ep.name)
            _fail(info, f"{type(exc).__name__}: {exc}")


def _collect(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> dict[str, list[tuple[str, str, Any]]]:
    """Every plugin's registrations ``(kind, name, obj)``; a plugin whose hook raises (an import
    error inside it, a bug) is marked failed and unregistered."""
    found: dict[str, list[tuple[str, str, Any]]] = {}
    for kind in KINDS:
        for impl in getattr(pm.hook, f"register_{kind}").get_hookimpls():
            plugin = impl.plugin_name
            items = found.setdefault(plugin, [])
            if infos[plugin].error is not None:
                continue

            def register(name: str, obj: Any, _items: list = items, _kind: str = kind) -> None:
                _items.append((_kind, name, obj))

            try:
                impl.function(register=register)
            except Exception as exc:
                _fail(infos[plugin], f"register_{kind} raised {type(exc).__name__}: {exc}")
    for plugin, info in infos.items():
        if info.error is not None and pm.has_plugin(plugin):
            pm.unregister(name=plugin)
    return found


def _fill_registries(pm: pluggy.PluginManager, infos: dict[str, PluginInfo]) -> dict[str, Registry]:
    """Registries of every plugin's names, carl's built-ins first: a plugin that takes a name
    already registered fails as a whole (the message names both), the others keep working."""
    found = _collect(pm, infos)
    registries = {kind: Registry(kind) for kind in KINDS}
    builtins_first = sorted(infos, key=lambda name: name not in BUILTIN_MODULES)
    for plugin in builtins_first:
        items = found.get(plugin, [])
        if infos[plugin].error is not None:
            continue
        taken = Registry.clash(registries, items, plugin)
        if taken is not None:
            if plugin in BUILTIN_MODULES:
                raise errors.CarlError(taken)
            _fail(infos[plugin], taken)
            pm.unregister(name=plugin)
            continue
        for kind, name, obj in items:
            registries[kind].register(name, obj, plugin)
            infos[plugin].provides.setdefault(kind, []).append(name)
    return registries


def load_plugins(force: bool = False) -> pluggy.PluginManager:
    """Discover plugins and fill the registries (idempotent unless ``force``). A plugin that
    cannot be imported, whose hook raises or that reuses a taken name is marked failed (see
    :func:`plugin_infos`) and left out; everything else keeps working."""
    if _State.manager is not None and not force:
        return _State.manager
    pm = pluggy.PluginManager("carl")
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}
    _load_entry_points(pm, infos)
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
    """Let every plugin add its CLI commands to the typer ``app`` (once per set of loaded plugins:
    after ``load_plugins(force=True)`` the previous plugins' commands are replaced). A plugin
    whose hook raises or takes a command name already in use adds nothing and is marked failed."""
    pm = load_plugins()
    done = getattr(app, "_carl_plugin_commands", None)
    if done:
        if done[0] is pm:
            return
        app.registered_commands[:], app.registered_groups[:] = done[1], done[2]  # carl's own commands
    app._carl_plugin_commands = (pm, list(app.registered_commands), list(app.registered_groups))
    for impl in pm.hook.register_commands.get_hookimpls():
        commands, groups = list(app.registered_commands), list(app.registered_groups)
        try:
            impl.function(app=app)
            before = _command_names(commands, groups)
            added = _command_names(app.registered_commands[len(commands):], app.registered_groups[len(groups):])
            taken = sorted(set(added) & set(before)) or sorted({n for n in added if added.count(n) > 1})
            if taken:
                raise errors.CarlError(f"the command 'carl {taken[0]}' exists already")
        except Exception as exc:
            app.registered_commands[:], app.registered_groups[:] = commands, groups
            _fail(_State.infos[impl.plugin_name], f"register_commands: {type(exc).__name__}: {exc}")


def _command_names(commands: list, groups: list) -> list[str]:
    """The names of typer commands and sub-apps (``CommandInfo`` / ``TyperInfo``)."""
    names = [c.name or c.callback.__name__.lower().replace("_", "-") for c in commands]
    return names + [g.name or g.typer_instance.info.name for g in groups]


def __getattr__(name: str):  # carl 0.1 defined CarlError and UnknownComponentError here
    return errors.moved_here(__name__, name)
