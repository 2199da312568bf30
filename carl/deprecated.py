"""Old import paths of carl 0.1's flat layout, kept working for one release with a
``DeprecationWarning`` that names the new path (a face: it may point anywhere below).

``import carl`` installs a finder for the moved modules: ``import carl.accel`` gives the module
``carl.training.accel`` itself (same object), after a warning. Three old modules had their names
spread over several new ones (``carl.hub``, ``carl.train``, ``carl.logs``): they become proxies
that look each name up where it lives now; ``carl.train`` stays callable (``carl.train(...)``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

REMOVED_IN = "0.3"
MOVED_MODULES = {
    "carl.accel": "carl.training.accel", "carl.cache": "carl.training.cache",
    "carl.checkpoints": "carl.training.checkpoints", "carl.checks": "carl.training.checks",
    "carl.jobs": "carl.training.jobs", "carl.jobs.ar": "carl.training.jobs.ar", "carl.jobs.base": "carl.training.jobs.base",
    "carl.jobs.tokenizer": "carl.training.jobs.tokenizer", "carl.nonfinite": "carl.training.nonfinite",
    "carl.processes": "carl.training.processes", "carl.run_folder": "carl.training.run_folder",
    "carl.signals": "carl.training.signals", "carl.state_files": "carl.training.state_files",
    "carl.cli_tokenizer": "carl.cli.tokenizer", "carl.backbone": "carl.model.backbone", "carl.modelcard": "carl.model.card",
    "carl.samples": "carl.model.samples",
}
# Old modules whose names now live in several places: the new homes, searched in order.
SPLIT_MODULES = {
    "carl.hub": ("carl.model.loading", "carl.model.folder", "carl.remote", "carl.api", "carl.layout", "carl.errors"),
    "carl.train": ("carl.training.trainer", "carl.training.schedule", "carl.training.jobs.ar", "carl.training.checkpoints",
                   "carl.layout", "carl.errors"),
    "carl.logs": ("carl.progress", "carl.training.logs", "carl.layout"),
}
RENAMED = {("carl.hub", "push"): ("carl.api", "push"), ("carl.hub", "WEIGHTS_FILE"): ("carl.layout", "WEIGHTS_FILE"),
           ("carl.train", "train"): ("carl.api", "train")}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated and will be removed in carl {REMOVED_IN}: use {new}", DeprecationWarning, stacklevel=3)


class _SplitModule(types.ModuleType):
    """An old module whose names moved to several new ones."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        home, attr = RENAMED.get((self.__name__, name), (None, name))
        for candidate in (home,) if home else SPLIT_MODULES[self.__name__]:
            module = importlib.import_module(candidate)
            if hasattr(module, attr):
                _warn(f"{self.__name__}.{name}", f"{candidate}.{attr}")
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r} (it moved in carl 0.2; see docs/architecture.md)")


class _CallableTrain(_SplitModule):
    """``carl.train``: the old training module, also ``carl.train(...)`` (:func:`carl.api.train`)."""

    def __call__(self, *args, **kwargs):
        from carl.api import train

        return train(*args, **kwargs)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname in MOVED_MODULES or fullname in SPLIT_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        if spec.name in SPLIT_MODULES:
            cls = _CallableTrain if spec.name == "carl.train" else _SplitModule
            return cls(spec.name, f"deprecated: the names of {spec.name} moved (see carl.deprecated)")
        _warn(spec.name, MOVED_MODULES[spec.name])
        return importlib.import_module(MOVED_MODULES[spec.name])  # the very module, not a copy

    def exec_module(self, module) -> None:
        pass


def install() -> None:
    """Make the old paths importable (idempotent); called by ``import carl``."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        # first: ``carl.jobs.ar`` must not reach the path finder, which would find the file through
        # ``carl.jobs.__path__`` (carl/training/jobs/) and load a second copy of the module
        sys.meta_path.insert(0, _Finder())
