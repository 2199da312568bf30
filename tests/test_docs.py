"""Every code block of README.md and docs/**/*.md is run, or checked, by the rules below
(tests/helpers/doc_blocks.py reads the blocks, tests/helpers/doc_runner.py runs them).

A block's kind is its fence's language:

- ``python``: runs **on its own**, as when a user copies that one block into a fresh Python: a
  fresh namespace, a fresh empty working folder, the suite's offline environment
  (``HF_HUB_OFFLINE=1``) and every installed carl plugin. A block that needs names or files of
  another block is a docs bug: fix the docs. Every ``carl.train(...)`` call runs on the tiny
  settings of its recipe's kind (``TINY`` below; they replace the call's own values of those keys).
- ``bash`` (``sh``, ``shell``): the commands of each line (joined by ``&&`` or ``;``) run in
  order. The bash blocks of a page share one working folder, a temporary copy of the repository,
  in page order: a later block may use what an earlier one made, as a reader following the page
  does (to run one block, the page's earlier bash blocks run first). Python and recipe blocks
  also run after the page's earlier bash blocks: they see the packages it installed and its fake
  Hub, not its files.

  - ``carl ...`` runs through the program's entry point (``carl.cli.main``) in this process.
    ``carl train RECIPE`` gets the tiny settings of its recipe's kind appended (an override the
    command gives for one of those keys is replaced, not repeated).
  - ``python benchmarks/NAME.py`` gets the script's quick flags from ``QUICK``; a benchmark
    without an entry fails (add the flags of a small run, or allow-list the command).
  - ``pip install`` is not run for what the README's set-up line installs (CI's set-up has run
    it); it is checked: PyPI packages exactly as pinned in the set-up line, package folders and
    extras that exist, and a line that installs carl installs the set-up's plugins with it.
    Another local package (``pip install -e docs/example_plugin``) is installed for the page,
    offline and without dependencies (editable with ``-e``).
  - any other command (``lint-imports``, ``python scripts/...``, ``cp``) runs in a subprocess.
  - a command whose comment starts with ``# error:`` must fail and print that text (a trailing
    ``...`` stands for the rest of the message).
  - a **synopsis line** shows a command's form, not an instance: a placeholder word (``RECIPE``,
    ``USER/REPO``, ``N``), an ``[optional]`` part or ``...`` (an indented line continues the line
    above it). It is checked, not run: each ``carl`` command it shows exists, with every option
    it shows.
  - a file a command names that the reader brings (``--csv my_series.csv``) and no block makes is
    written first by its maker in ``GIVEN``.
  - ``NOT_RUN`` is the allow-list: (page, command as written) -> why. Nothing else is left out,
    and an entry that matches no command fails.
- ``yaml``: a recipe; trained on its own like ``carl train FILE``, on tiny settings.
- ``toml``: parsed (``tomllib``); an entry-point table must be carl's group, ``carl``.
- ``LANG title="PATH"``: a file of an example folder (``FILES``), checked identical to it
  (``docs/example_plugin`` is installed, trained and run by tests/test_example_plugin.py).
- ``text``: not code (a diagram, a file tree): shown, not run.
- anything else (no language, another one, an indented block) fails
  ``test_every_block_has_a_kind``, as does a bash line the runner cannot run (a pipe, a redirection).

**The Hub** is a local fake: ``carl push`` and ``push_to_hub`` (``HfApi.create_repo`` and
``upload_folder``) write a snapshot into the page's own Hub cache, and a repo id given to ``carl
sample`` or ``from_pretrained`` is read from it by huggingface_hub's offline cache lookup; a repo id
that no earlier block pushed fails in one line, as any offline miss does.

No two pages write the same training output folder: a reader who follows both would see the
second run refused. Nothing here is marked slow: the blocks run on tiny settings and one torch
thread in about 50 s on 2 busy CPU cores (load 9; about 26 s of CPU time), most of it the MNIST and
time-series runs of the README.

Why not pytest-markdown-docs or phmdoctest: both run Python blocks only (half of these blocks are
``carl`` commands), and pytest-markdown-docs 0.9 requires markdown-it-py < 4, older than the one
rich brings here.
"""

import re
from pathlib import Path

import pytest
import torch

from helpers.doc_blocks import ROOT, Block, Command, Synopsis, all_blocks, commands
from helpers.doc_runner import TINY, Page, Rules, check_synopsis, tiny_argv, tiny_overrides

NOT_RUN = {
    ("README.md", "python -m pytest -q"):
        "the test suite, which holds this test; CI runs this README line (test_ci_runs_the_readme_test_line)",
    ("README.md", "HF_HUB_OFFLINE=1 python -m pytest -q -m gpu"):
        "the GPU suite: it needs CUDA (without it every test it selects is skipped)",
    ("README.md", "nice -n 19 python scripts/mutation.py"):
        "mutation testing of every module runs the tests once per mutant: about 25 minutes",
    ("README.md", "nice -n 19 python scripts/mutation.py train --sample 60"):
        "60 mutants of the training loop, each running its tests: several minutes",
    ("README.md", "nice -n 19 python scripts/mutation.py --planted"):
        "37 planted bugs, each running its module's tests: tens of minutes",
}
QUICK = {  # benchmark script -> the flags of a small run
    "benchmarks/timeseries.py": ["--samples", "2", "--windows", "2"],
    "benchmarks/forecasting.py": ["--samples", "2"],   # the baselines come from their cache
}


def macro_csv(path: Path) -> None:
    """A reader's own series: the built-in macro history written as the CSV ``carl forecast --csv`` reads."""
    from carl_timeseries.data import macro_history
    from carl_timeseries.history import write_history

    write_history(macro_history(), path)


def sales_csv(path: Path) -> None:
    """docs/forecasting.md's two monthly series, as its Python block writes them (python blocks
    run in their own folder, so the page's commands get the file from here)."""
    import numpy as np
    import pandas as pd

    months, t = pd.date_range("2015-01-01", periods=72, freq="MS"), np.arange(72)
    y = np.r_[200 + 2 * t + 30 * np.sin(2 * np.pi * t / 12), 80 + 10 * np.cos(2 * np.pi * t / 12) + t % 5]
    pd.DataFrame({"unique_id": np.repeat(["north", "south"], 72), "ds": np.tile(months, 2), "y": y}).to_csv(path, index=False)


GIVEN = {  # a file a command names that the reader brings (no block makes it) -> what the test writes there first
    "my_series.csv": macro_csv,
    "sales.csv": sales_csv,
}
RULES = Rules(not_run=NOT_RUN, quick=QUICK, given=GIVEN)
FILES = {"docs/plugins.md": "docs/example_plugin"}  # a page -> the folder its titled blocks show

RUN = [b for b in all_blocks() if b.kind != "text"]
OUTPUTS: dict[str, str] = {}  # a training output folder -> the page that wrote it


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The blocks' models are tiny: on one thread (their subprocesses too, doc_runner passes it on).
    Two threads gain nothing here and, on cores other processes keep busy, made each generation
    step about a hundred times slower (the threads wait for each other at every small operation)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    made: dict[str, Page] = {}

    def page(name: str) -> Page:
        if name not in made:
            made[name] = Page(name, tmp_path_factory.mktemp(re.sub(r"\W", "-", name)), RULES)
        return made[name]

    return page


@pytest.mark.parametrize("block", RUN, ids=str)
def test_block(block: Block, pages):
    if block.kind == "file":
        shown = ROOT / FILES[block.page] / block.title
        assert block.text == shown.read_text(), f"{block} differs from {shown.relative_to(ROOT)}"
        return
    page = pages(block.page)
    page.run_through(block, [b for b in all_blocks() if b.page == block.page])
    for output in page.outputs:
        assert OUTPUTS.setdefault(output, block.page) == block.page, (
            f"{block}: {output} is written by {OUTPUTS[output]} too; give each page its own output folders")


def rule_problems(blocks) -> list[str]:
    """What the runner could not run or check among ``blocks``, one line each."""
    problems = []
    for block in blocks:
        if block.kind == "unknown":
            problems.append(f"{block}: a fence without a known language ({block.info!r}): python, bash, yaml, toml "
                            f"or text (not code)")
        elif block.kind == "file" and block.page not in FILES:
            problems.append(f"{block}: a titled block on a page without an example folder in FILES")
        elif block.kind == "bash":
            try:
                items = commands(block)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            for item in items:
                if isinstance(item, Command) and (block.page, item.text) not in NOT_RUN:
                    script = next((w for w in item.argv if w.startswith("benchmarks/") and w.endswith(".py")), None)
                    if script and script not in QUICK:
                        problems.append(f"{item}: a benchmark without quick flags in QUICK")
    return problems


def test_every_block_has_a_kind_and_every_command_a_rule():
    """A new block, or a new line in a bash block, fails here unless the runner knows how to run it."""
    assert not rule_problems(all_blocks()), "\n".join(rule_problems(all_blocks()))


def test_a_block_no_rule_runs_is_reported():
    new = [Block("x.md", 1, "", "a diagram\n"), Block("x.md", 5, "console", "$ carl plugins\n"),
           Block("x.md", 9, "bash", "python benchmarks/new.py runs/x\n"), Block("x.md", 12, "bash", "carl plugins > p\n"),
           Block("x.md", 15, 'python title="a.py"', "x = 1\n")]
    assert [line.split(":")[1] for line in rule_problems(new)] == ["1", "5", "10", "12", "15"]


def test_the_allow_list_and_the_given_files_name_only_commands_that_exist():
    written = {(b.page, c.text) for b in all_blocks() if b.kind == "bash" for c in commands(b) if isinstance(c, Command)}
    assert set(NOT_RUN) <= written, f"allow-listed but in no block: {sorted(set(NOT_RUN) - written)}"
    named = {w for b in all_blocks() if b.kind == "bash" for c in commands(b) if isinstance(c, Command) for w in c.argv}
    assert set(GIVEN) <= named, f"given but named by no command: {sorted(set(GIVEN) - named)}"


def test_quick_flags_are_the_scripts_own():
    for script, flags in QUICK.items():
        source = (ROOT / script).read_text()
        for flag in (f for f in flags if f.startswith("--")):
            assert f'"{flag}"' in source, f"{script} has no option {flag}"


def test_ci_runs_the_readme_test_line():
    """The README's test command (its lint-imports and pytest are not run here) is what CI runs."""
    readme = [b for b in all_blocks() if b.page == "README.md" and b.kind == "bash"]
    line = next(b.text.strip() for b in readme if "pytest" in b.text and "pip install" in b.text)
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.replace("pip install -q ", "pip install ") == line


def test_the_runner_reads_commands_synopses_and_expected_errors():
    block = Block("x.md", 1, "bash", "HF_HUB_OFFLINE=1 carl train tiny a.b=1 && carl sample runs/tiny  # draw\n"
                                     "carl push FOLDER USER/REPO [--private]\n"
                                     "carl train nope   # error: no recipe 'nope'...\n"
                                     "carl sample MODEL [--num N]\n"
                                     "           [--device cuda]\n")
    first, second, push, nope, sample = commands(block)
    assert (first.env, first.argv, first.text) == ({"HF_HUB_OFFLINE": "1"}, ["carl", "train", "tiny", "a.b=1"],
                                                   "HF_HUB_OFFLINE=1 carl train tiny a.b=1")
    assert second.argv == ["carl", "sample", "runs/tiny"] and second.comment == "draw"
    assert isinstance(push, Synopsis) and isinstance(sample, Synopsis) and sample.text.endswith("[--device cuda]")
    assert nope.expected_error == "no recipe 'nope'"
    with pytest.raises(ValueError, match="uses '\\|'"):
        commands(Block("x.md", 1, "bash", "carl recipes list | head\n"))


def test_the_tiny_rule_replaces_the_command_s_own_values():
    argv = tiny_argv(["train", "tiny", "train.max_steps=100", "sample.cfg=2.0", "--output", "x"])
    assert argv[:6] == ["train", "tiny", "sample.cfg=2.0", "--output", "x", "train.max_steps=2"]
    assert {w.split("=")[0] for w in argv[5:]} == set(TINY["ar"]) and "train.max_steps=100" not in argv
    assert "eval.normalize_samples=64" in tiny_argv(["train", "tiny-ae"])  # a tokenizer recipe
    assert tiny_argv(["sample", "runs/x"]) == ["sample", "runs/x"]
    assert tiny_overrides("tiny", {"train.max_steps": 100, "train.lr": 0.1}) == {"train.lr": 0.1, **TINY["ar"]}
    assert tiny_overrides("tiny", ["train.max_steps=100"])[0] == "train.max_steps=2"


def test_a_synopsis_with_an_option_carl_lacks_fails():
    check_synopsis(Synopsis(Block("x.md", 1, "bash", ""), 2, "carl train RECIPE [--output DIR] [--resume | --overwrite]"))
    with pytest.raises(AssertionError, match="'carl train' has no option --nope"):
        check_synopsis(Synopsis(Block("x.md", 1, "bash", ""), 2, "carl train RECIPE [--nope]"))
    with pytest.raises(AssertionError, match="'carl recipes' needs a subcommand"):
        check_synopsis(Synopsis(Block("x.md", 1, "bash", ""), 2, "carl recipes NAME"))


@pytest.mark.parametrize("line, why", [
    ("pip install numpy", "not what the README's set-up line installs"),
    ("pip install torch==2.3.0", "not what the README's set-up line installs"),
    ("pip install -e .", "installs carl without the plugins"),
    ('pip install -e ".[nope]" -e plugins/image_ear -e plugins/timeseries', "has no extra"),
    ("pip install -e docs", "not a package folder"),
])
def test_a_pip_line_that_strays_from_the_set_up_fails(line, why, tmp_path):
    page = Page("x.md", tmp_path, RULES)
    (item,) = commands(Block("x.md", 1, "bash", line + "\n"))
    with pytest.raises(AssertionError, match=why):
        page.command(item)


def test_a_command_commented_error_must_fail_with_that_message(tmp_path):
    page = Page("x.md", tmp_path, RULES)
    fails, succeeds, other = commands(Block("x.md", 1, "bash", "carl recipes show nope   # error: no recipe file or ...\n"
                                                               "carl --version   # error: no recipe file\n"
                                                               "carl recipes show nope   # error: something else\n"))
    page.command(fails)
    for item in (succeeds, other):
        with pytest.raises(AssertionError, match="should fail with"):
            page.command(item)
