"""Runs the code blocks of carl's docs (tests/test_docs.py states the rules this implements).

One :class:`Page` per Markdown page holds what a reader of that page builds up: a temporary copy of
the repository (the bash blocks' working folder), a site folder for the local packages the page
installs, and a local fake of the Hugging Face Hub. ``carl`` commands and Python blocks run in this
interpreter (``carl.cli.main`` is the ``carl`` program's entry point); other commands run in a
subprocess.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers.doc_blocks import ROOT, Block, Command, Synopsis, commands, package_extras, pip_requirements, setup_requirements

# The tiny settings appended to `carl train RECIPE` (replacing the command's own value of a key) and
# merged into the overrides of every `carl.train(...)` call, by the kind of recipe.
TINY_TRAIN = {"train.max_steps": 2, "train.global_batch": 8, "train.micro_batch": None, "train.warmup_epochs": 0,
              "train.warmup_steps": 0, "train.sample_every": None, "train.tracker": "none", "eval.every_epochs": None}
TINY = {
    "ar": {**TINY_TRAIN, "sample.num_steps": 2, "sample.rows": 2, "sample.per_row": 2},
    "tokenizer": {**TINY_TRAIN, "eval.samples": 20, "eval.normalize_samples": 64},
}
COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "runs", "build", ".pytest_cache",
                                     ".hypothesis", ".import_linter_cache", ".whl")
SUBPROCESS_TIMEOUT = 300


def recipe_kind(recipe) -> str | None:
    """``ar`` or ``tokenizer`` for a recipe name, path or config; None when it does not load (the
    command then fails on its own, with carl's message)."""
    from carl.config import TokenizerRecipeConfig, load_recipe

    try:
        cfg = recipe if hasattr(recipe, "train") else load_recipe(recipe)
    except Exception:
        return None
    return "tokenizer" if isinstance(cfg, TokenizerRecipeConfig) else "ar"


def tiny_argv(argv: list[str]) -> list[str]:
    """``carl train RECIPE ...`` with the tiny settings of its kind; other commands as they are."""
    if argv[:1] != ["train"]:
        return argv
    words = [w for w in argv[1:] if not w.startswith("-")]
    kind = recipe_kind(words[0]) if words else None
    if kind is None:
        return argv
    tiny = TINY[kind]
    kept = [w for w in argv if w.split("=", 1)[0] not in tiny]
    return kept + [f"{key}={json.dumps(value)}" for key, value in tiny.items()]


def tiny_overrides(recipe, overrides) -> dict | list:
    """The overrides of a ``carl.train(recipe, overrides)`` call with the tiny settings of its kind."""
    kind = recipe_kind(recipe)
    if kind is None:
        return overrides
    tiny = TINY[kind]
    if isinstance(overrides, Mapping):
        return {**{k: v for k, v in overrides.items() if k not in tiny}, **tiny}
    return [o for o in overrides if o.split("=", 1)[0] not in tiny] + [f"{k}={json.dumps(v)}" for k, v in tiny.items()]


# -- the fake Hub -----------------------------------------------------------------------------------


def fake_upload_folder(self, *, folder_path, repo_id, commit_message=None, **kwargs):
    """HfApi.upload_folder into the Hub cache: a new snapshot that ``refs/main`` points at, so that
    huggingface_hub's offline reads find it as if downloaded."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    digest = hashlib.sha1()
    for path in sorted(Path(folder_path).rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    commit = digest.hexdigest()
    shutil.copytree(folder_path, repo / "snapshots" / commit, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{commit} (the doc tests' fake Hub)")


@contextlib.contextmanager
def fake_hub(cache: Path) -> Iterator[None]:
    import huggingface_hub
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_CACHE", str(cache))
        mp.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kwargs: None)
        mp.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload_folder)
        yield


# -- a page --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rules:
    """The per-command decisions of tests/test_docs.py (its NOT_RUN, QUICK and GIVEN tables)."""

    not_run: Mapping[tuple[str, str], str] = field(default_factory=dict)  # (page, command as written) -> why
    quick: Mapping[str, list[str]] = field(default_factory=dict)  # benchmark script -> the flags of a small run
    given: Mapping[str, Callable[[Path], object]] = field(default_factory=dict)  # a reader's file -> its maker


class Page:
    """What a reader of one page has built so far; blocks run in page order (:meth:`run_through`)."""

    def __init__(self, name: str, tmp: Path, rules: Rules = Rules()):
        self.name, self.tmp, self.rules = name, tmp, rules
        self.workspace = tmp / "repository"
        shutil.copytree(ROOT, self.workspace, symlinks=True, ignore=COPY_IGNORE)
        self.site, self.hub = tmp / "site", tmp / "hub"
        self.site.mkdir()
        self.hub.mkdir()
        self.installed: list[Path] = []  # local folders installed into self.site
        self.done: set[int] = set()  # lines of the blocks run
        self.outputs: set[str] = set()  # training output folders, relative to the working folder

    # -- the environment of the page's carl: every installed plugin, the page's packages, the fake Hub

    @contextlib.contextmanager
    def environment(self, cwd: Path, env: Mapping[str, str] = {}) -> Iterator[None]:
        from carl.plugins import load_plugins

        saved_path, saved_meta, saved_modules = list(sys.path), list(sys.meta_path), set(sys.modules)
        try:
            with pytest.MonkeyPatch.context() as mp, fake_hub(self.hub):
                mp.delenv("CARL_PLUGINS", raising=False)  # as for a user: every installed plugin
                for key, value in env.items():
                    mp.setenv(key, value)
                mp.chdir(cwd)
                if self.installed:
                    site.addsitedir(str(self.site))  # runs the editable installs' .pth files
                load_plugins(force=True)
                yield
        finally:
            sys.path[:], sys.meta_path[:] = saved_path, saved_meta
            for module in set(sys.modules) - saved_modules:  # the page's packages, imported from its folders
                if str(getattr(sys.modules[module], "__file__", None) or "").startswith(str(self.tmp)):
                    del sys.modules[module]
            load_plugins(force=True)

    # -- blocks ------------------------------------------------------------------------------

    def run_through(self, block: Block, blocks: list[Block]) -> None:
        """Run the page's earlier bash blocks not run yet (their state is the page's), then ``block``."""
        for earlier in blocks:
            if earlier.line < block.line and earlier.kind == "bash" and earlier.line not in self.done:
                self.run(earlier)
        self.run(block)

    def run(self, block: Block) -> None:
        self.done.add(block.line)
        scratch = self.tmp / f"block-{block.line}"  # a fresh folder for a block that runs on its own
        scratch.mkdir()
        if block.kind == "bash":
            for item in commands(block):
                self.command(item)
        elif block.kind == "python":
            self.python(block, scratch)
        elif block.kind == "yaml":
            recipe = scratch / "recipe.yaml"
            recipe.write_text(block.text)
            with self.environment(scratch):
                argv = tiny_argv(["train", str(recipe), "--output", "run", "--no-progress"])
                code, out = run_carl(argv)
            assert code == 0, f"{block}: the recipe does not train:\n{out[-3000:]}"
        elif block.kind == "toml":
            table = tomllib.loads(block.text)
            groups = table.get("project", {}).get("entry-points", {})
            assert not groups or set(groups) == {"carl"}, f"{block}: carl's entry-point group is 'carl', not {sorted(groups)}"
        else:
            raise AssertionError(f"{block}: a {block.kind} block is not run here")

    def python(self, block: Block, cwd: Path) -> None:
        """The block on its own: a fresh namespace in a fresh folder, every carl.train() on tiny settings."""
        import carl.api

        original = carl.api.train

        def train(recipe, overrides=(), **kwargs):
            tiny = tiny_overrides(recipe, overrides)
            folder = original(recipe, tiny, **kwargs)
            assert tiny is not overrides, f"{block}: carl.train({recipe!r}) ran, but its recipe did not load to be made tiny"
            self.outputs.add(os.path.relpath(Path(folder).resolve(), cwd.resolve()))
            return folder

        code = compile(block.text, str(block), "exec")
        with self.environment(cwd), pytest.MonkeyPatch.context() as mp:
            mp.setattr(carl.api, "train", train)
            exec(code, {"__name__": "__main__"})

    # -- bash commands -----------------------------------------------------------------------

    def command(self, item: Command | Synopsis) -> None:
        if isinstance(item, Synopsis):
            with self.environment(self.workspace):
                check_synopsis(item)
            return
        if (item.block.page, item.text) in self.rules.not_run:
            return  # not run, for the reason the allow-list gives
        for word in item.argv:  # a file the reader brings: made for the command, as GIVEN says
            if word in self.rules.given and not (self.workspace / word).exists():
                self.rules.given[word](self.workspace / word)
        requirements = pip_requirements(item)
        if requirements is not None:
            self.pip(item, requirements)
            return
        if item.argv[0] == "carl":
            with self.environment(self.workspace, item.env):
                argv = tiny_argv(item.argv[1:])
                assert argv != item.argv[1:] or argv[:1] != ["train"] or item.expected_error, (
                    f"{item}: its recipe does not load, so it cannot be made tiny")
                code, out = run_carl(argv)
            if argv[:1] == ["train"] and code == 0:
                self.outputs.add(_train_output(out))
        else:
            argv = item.argv + quick_flags(item, self.rules.quick)
            code, out = self.subprocess(argv, item.env)
        expected = item.expected_error
        if expected is None:
            assert code == 0, f"{item}\nexit {code}:\n{out[-4000:]}"
        else:
            assert code != 0 and expected in out, f"{item}\nshould fail with {expected!r}; exit {code}:\n{out[-2000:]}"

    def subprocess(self, argv: list[str], env: Mapping[str, str]) -> tuple[int, str]:
        environ = {k: v for k, v in os.environ.items() if k != "CARL_PLUGINS"}
        paths = [str(self.site), *map(str, self.installed), environ.get("PYTHONPATH", "")]
        environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))  # as many threads as the blocks in this process
        environ.update(env, HF_HUB_CACHE=str(self.hub), PYTHONPATH=os.pathsep.join(p for p in paths if p),
                       PATH=os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", "")]))
        try:
            done = subprocess.run(["bash", "-c", " ".join(map(_quote, argv))], cwd=self.workspace, env=environ,
                                  capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            return 124, f"timed out after {SUBPROCESS_TIMEOUT} s"
        return done.returncode, done.stdout + done.stderr

    def pip(self, item: Command, requirements: list) -> None:
        """Not run for what the set-up line installs; checked; other local folders installed for the page."""
        setup = setup_requirements()
        setup_local = {r.local for r in setup if r.local}
        for requirement in requirements:
            folder = requirement.local
            if folder is None:
                assert requirement.spec in {r.spec for r in setup}, (
                    f"{item}: {requirement.spec} is not what the README's set-up line installs "
                    f"({' '.join(r.spec for r in setup)})")
                continue
            assert (folder / "pyproject.toml").is_file(), f"{item}: {requirement.spec} is not a package folder"
            missing = set(requirement.extras) - package_extras(folder)
            assert not missing, f"{item}: {folder.name or '.'} has no extra {sorted(missing)}"
            if folder not in setup_local:
                self.install(folder.relative_to(ROOT), requirement.editable)
        installs = {r.local for r in requirements if r.local}
        if ROOT in installs:
            assert setup_local <= installs, (f"{item}: installs carl without the plugins of the set-up line "
                                             f"({' '.join(r.spec for r in setup if r.local)})")

    def install(self, relative: Path, editable: bool) -> None:
        source = self.workspace / relative
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "--target", str(self.site), *(["-e"] if editable else []), str(source)]
        done = subprocess.run(pip, capture_output=True, text=True, cwd=self.tmp)
        assert done.returncode == 0, f"pip install {relative}: {done.stderr[-2000:]}"
        self.installed.append(source)


def run_carl(argv: list[str]) -> tuple[int, str]:
    """``carl ARGV`` through the program's entry point: (exit code, what it printed)."""
    from carl import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            cli.main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue()


def quick_flags(item: Command, quick: Mapping) -> list[str]:
    """The quick flags of a benchmark script (``python benchmarks/x.py``); a script without any fails."""
    scripts = [w for w in item.argv if w.startswith("benchmarks/") and w.endswith(".py")]
    if not scripts:
        return []
    assert scripts[0] in quick, (f"{item}: {scripts[0]} has no quick flags in tests/test_docs.py QUICK; add the flags "
                                 f"of a small run (or allow-list the command, with the reason)")
    return list(quick[scripts[0]])


def check_synopsis(item: Synopsis) -> None:
    """Each form names a carl command, and each option it shows is one of that command's."""
    import typer.main

    from carl import cli
    from carl.plugins import register_commands

    register_commands(cli.app)
    root = typer.main.get_command(cli.app)
    for words in item.forms():
        assert words[0] == "carl", f"{item}: a synopsis of carl's commands only"
        command, path = root, ["carl"]
        for word in words[1:]:
            sub = getattr(command, "commands", {}).get(word)
            if sub is None:
                break
            command, path = sub, path + [word]
        assert not hasattr(command, "commands") or path == ["carl"], f"{item}: '{' '.join(path)}' needs a subcommand"
        known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
        shown = {part for word in words for part in word.strip("[]").split("|") if part.startswith("-")}
        unknown = sorted(shown - known - {"--help"})
        assert not unknown, f"{item}: '{' '.join(path)}' has no option {', '.join(unknown)}"


def _train_output(out: str) -> str:
    found = re.findall(r"(?:model|tokenizer) folder: (.+)", out)
    return found[-1].strip() if found else "?"


def _quote(word: str) -> str:
    return word if re.fullmatch(r"[\w@%+=:,./{}*~-]+", word) else "'" + word.replace("'", "'\\''") + "'"
