"""carl 0.1's flat module paths keep working for one release (:mod:`carl.deprecated`): every old
path gives the very object of its new home and warns with a DeprecationWarning that names a new
path which works; the public names of the package root never warn."""

import importlib
import subprocess
import sys
import warnings

import pytest

import carl
from carl.deprecated import MOVED_MODULES, REMOVED_IN, SPLIT_MODULES

# The public names of carl 0.1's three split modules (commit 3d151e5), with their new homes.
SPLIT_NAMES = {
    "carl.hub": {
        "WEIGHTS_FILE": "carl.layout", "EMA_FILE": "carl.layout", "PUBLISHED": "carl.layout",
        "COMPONENTS": "carl.model.folder", "looks_like_path": "carl.remote", "hub_failure": "carl.remote",
        "resolve_folder": "carl.remote", "local_folder": "carl.model.folder", "read_config": "carl.model.folder",
        "is_checkpoint": "carl.model.folder", "requirements": "carl.model.folder", "missing_plugins": "carl.model.folder",
        "check_requirements": "carl.model.folder", "write_model_folder_extras": "carl.model.folder",
        "LoadedModel": "carl.model.loading", "open_model": "carl.model.loading", "load_model": "carl.model.loading",
        "push": "carl.api",
    },
    "carl.train": {
        "Batching": "carl.training.schedule", "plan_batching": "carl.training.schedule",
        "learning_rate": "carl.training.schedule", "lr_factor": "carl.training.schedule", "Trainer": "carl.training.trainer",
        "train": "carl.api", "param_groups": "carl.training.jobs.ar", "train_temperature": "carl.training.jobs.ar",
        "latest_checkpoint": "carl.training.checkpoints", "CHECKPOINTS": "carl.layout",
    },
    "carl.logs": {
        "LOGS": "carl.layout", "interactive": "carl.progress", "duration": "carl.progress", "size": "carl.progress",
        "StepStats": "carl.training.logs", "TrainingLog": "carl.training.logs", "files_written": "carl.training.logs",
    },
}


def deprecations(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]


def check_advice(message: str, old: str, obj) -> None:
    """``message`` says that ``old`` is deprecated and names a path that is not, which gives ``obj``."""
    assert message.startswith(f"{old} is deprecated and will be removed in carl {REMOVED_IN}: use "), message
    module, _, attr = message.rsplit("use ", 1)[1].rpartition(".")
    assert module not in MOVED_MODULES and module not in SPLIT_MODULES, message
    assert getattr(importlib.import_module(module), attr) is obj, message


@pytest.fixture(autouse=True)
def forget_old_paths():
    """Each test imports the old paths afresh and leaves no trace: importing ``carl.train`` makes the
    package attribute ``carl.train`` the old module (callable, but not :func:`carl.api.train`)."""
    def forget():
        for name in [*MOVED_MODULES, *SPLIT_MODULES]:
            sys.modules.pop(name, None)
            parent, _, leaf = name.rpartition(".")
            if parent == "carl":
                carl.__dict__.pop(leaf, None)

    forget()
    yield
    forget()


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_a_moved_module_is_its_new_home_after_a_warning(old):
    new = importlib.import_module(MOVED_MODULES[old])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is new  # the very module: same classes, same functions, one copy of its state
    assert sys.modules[MOVED_MODULES[old]] is new and module.__name__ == MOVED_MODULES[old]
    said = deprecations(caught)
    assert f"{old} is deprecated and will be removed in carl {REMOVED_IN}: use {MOVED_MODULES[old]}" in said, said
    parent, _, leaf = MOVED_MODULES[old].rpartition(".")
    assert getattr(importlib.import_module(parent), leaf) is new  # the new package's attribute is untouched


def test_a_moved_module_works_with_from_imports():
    with pytest.warns(DeprecationWarning):
        from carl.accel import DeviceEMA  # noqa: F401  (the old spelling, as users wrote it)
    from carl.training.accel import DeviceEMA as new

    assert DeviceEMA is new


@pytest.mark.parametrize("old, name", [(old, name) for old, names in SPLIT_NAMES.items() for name in names])
def test_each_name_of_a_split_module_is_the_object_of_its_new_home(old, name):
    home = importlib.import_module(SPLIT_NAMES[old][name])
    expected = getattr(home, name)
    module = importlib.import_module(old)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(module, name)
    assert value is expected
    said = deprecations(caught)
    assert len(said) == 1, said
    check_advice(said[0], f"{old}.{name}", value)


def test_split_modules_refuse_a_name_that_never_was_there():
    module = importlib.import_module("carl.hub")
    with pytest.raises(AttributeError, match=r"module 'carl\.hub' has no attribute 'nothing_like_this' \(it moved in carl 0\.2"):
        module.nothing_like_this  # noqa: B018


def test_old_carl_hub_open_model_opens_a_model(four_steps):
    import carl.hub

    with pytest.warns(DeprecationWarning, match=r"^carl\.hub\.open_model is deprecated .*: use carl\.model\.loading\.open_model$"):
        open_model = carl.hub.open_model
    loaded = open_model(four_steps)
    assert loaded.folder == four_steps and loaded.recipe.train.max_steps == 4


def test_the_old_carl_train_module_is_still_callable(monkeypatch):
    import carl.api
    import carl.train

    calls = []
    monkeypatch.setattr(carl.api, "train", lambda *args, **kwargs: calls.append((args, kwargs)) or "folder")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert carl.train("tiny", {"train.max_steps": 2}, output="x", progress=False) == "folder"
    assert calls == [(("tiny", {"train.max_steps": 2}), {"output": "x", "progress": False})]
    assert deprecations(caught) == []  # calling carl.train is the public API, not a deprecated path
    assert callable(sys.modules["carl.train"])


def test_the_root_s_public_names_never_warn():
    import carl.api
    import carl.model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from carl import ContinuousAR, load_model, open_model, push, train

        assert ContinuousAR is carl.model.ContinuousAR and open_model is carl.model.open_model
        assert load_model is carl.load_model is carl.model.load_model
        assert train is carl.train is carl.api.train and push is carl.api.push
    assert deprecations(caught) == []


def test_a_fresh_interpreter_imports_the_public_api_without_a_deprecation():
    code = ("import warnings\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    import carl\n"
            "    from carl import ContinuousAR, load_model, open_model, push, train, RecipeConfig, load_recipe, CarlError\n"
            "    carl.train, carl.open_model, carl.ContinuousAR\n"
            "    ContinuousAR(load_recipe('tiny').model)\n"
            "print([str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
