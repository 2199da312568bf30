"""Mutation testing of carl's core with mutmut, one module at a time, on few CPU cores.

    python scripts/mutation.py                      # every module, then a table of scores
    python scripts/mutation.py scores orders        # some modules
    python scripts/mutation.py train --sample 80    # a random sample of a module's mutants
    python scripts/mutation.py --list               # the modules, their files and their tests

Each module is run in its own scratch copy of the repository (``build/mutation/<module>/``, where
mutmut writes its ``mutants/`` tree) against the fast tests that exercise it, so a run never
touches the working tree and one module's results never go stale with another's tests. mutmut
forks one warm process per mutant and runs only the tests that reach the mutated function.

Two things are adapted to carl:

* mutmut skips decorated functions; ``@torch.no_grad()`` only switches autograd off and is kept
  on mutmut's trampoline, so functions decorated with it alone are mutated too (``sample`` of
  every scoring rule, ``generate``, the EMA update).
* plugin packages are copied to the top of the scratch copy (``carl_image_ear/``), so that
  mutmut's module names match the names the tests import.

The score is killed / (mutants - equivalent), timeouts counting as killed (mutmut's convention).
Mutants listed in ``tests/mutation_equivalent.md`` are equivalent (no test can tell them from
the original) and left out of the denominator; an entry whose mutated line no longer matches is
ignored, so a stale list cannot hide a survivor. Survivors are printed with their diffs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRATCH = ROOT / "build" / "mutation"
EQUIVALENT = ROOT / "tests" / "mutation_equivalent.md"
MUTMUT_VERSION = "3.8.1"  # keep in step with the `mutation` extra of pyproject.toml


@dataclass(frozen=True)
class Module:
    files: tuple[str, ...]  # globs, relative to the scratch copy (plugin packages sit at its top)
    tests: tuple[str, ...]  # the fast tests that exercise them (pytest arguments: folders, files, test ids)


# `carl tokenizer scale` trains a tokenizer first (the session's `tiny_ae` fixture): no module's
# mutants need it, so the CLI's tests are run without it.
CLI = ("tests/test_cli.py", "--deselect", "tests/test_cli.py::test_scale_command_measures_and_writes")
# The completion test that trains three models (a minute) is left out: every completion mutant would
# run it, and the other completion tests reach the same code.
MODEL_TESTS = ("tests/model/test_ar.py", "tests/model/test_generation.py", "tests/model/test_completion.py",
               "tests/model/test_official_compat.py",
               "--deselect", "tests/model/test_completion.py::test_a_determined_half_is_completed_far_better_than_sampled")
FOLDER_TESTS = ("tests/model/test_folder.py", "tests/model/test_loading.py", "tests/model/test_card.py", "tests/test_remote.py",
                "tests/test_api.py")
MODULES: dict[str, Module] = {
    "scores": Module(("carl/scores/*",), ("tests/scores", *MODEL_TESTS)),
    "orders": Module(("carl/orders/*",), ("tests/orders", *MODEL_TESTS)),
    "backbone": Module(("carl/model/backbone.py",), ("tests/model/test_backbone.py", *MODEL_TESTS)),
    "weights": Module(("carl/weights.py",), ("tests/test_weights.py", "tests/model/test_folder.py")),
    "model": Module(("carl/model/ar.py", "carl/model/generation.py", "carl/model/completion.py"),
                    (*MODEL_TESTS, *FOLDER_TESTS, "plugins/image_ear/tests/test_convert.py")),
    "config": Module(("carl/config.py",), ("tests/test_config.py", *CLI)),
    "folder": Module(("carl/model/folder.py", "carl/model/loading.py"),
                     (*FOLDER_TESTS, "tests/model/test_previous_version.py", "tests/model/test_ar.py", *CLI,
                      "plugins/image_ear/tests/test_convert.py")),
    "remote": Module(("carl/remote.py",), (*FOLDER_TESTS, *CLI)),
    "api": Module(("carl/api.py",), ("tests/test_api.py", "tests/model/test_folder.py", "tests/training/test_run_folder.py", *CLI)),
    "train": Module(("carl/training/trainer.py", "carl/training/schedule.py"),
                    ("tests/training/test_schedule.py", "tests/training/test_outputs.py", "tests/training/test_trainer.py",
                     "tests/training/test_checkpoints.py", "tests/training/test_state_files.py", "tests/training/test_signals.py",
                     "tests/training/test_nonfinite.py", "tests/training/test_run_folder.py", "tests/training/test_logs.py",
                     "tests/training/test_accel.py", "tests/training/test_checks.py", "tests/test_ranges.py",
                     "tests/test_progress.py", "tests/test_data.py", "tests/test_cli.py::test_cli_errors_are_one_line",
                     "tests/test_cli.py::test_the_command_line_passes_on_an_exit_code_typer_returns",
                     "plugins/image_ear/tests/test_cache.py", "plugins/image_ear/tests/test_eval.py")),
    "convert": Module(("carl_image_ear/convert.py",), ("plugins/image_ear/tests/test_convert.py",
                                                       "plugins/image_ear/tests/test_convert_official_sizes.py")),
    "kl16": Module(("carl_image_ear/kl16.py",), ("plugins/image_ear/tests/test_kl16.py",)),
}
PLUGINS = {"carl_image_ear": "plugins/image_ear/carl_image_ear", "carl_timeseries": "plugins/timeseries/carl_timeseries"}
TEST_DIRS = ("tests", "plugins/image_ear/tests", "plugins/timeseries/tests")
KILLED = {"killed", "timeout"}


# ---------------------------------------------------------------------------------------------
# The driver: one scratch copy and one mutmut process per module


def copy_sources(scratch: Path) -> Path:
    """A fresh scratch copy of carl, the plugin packages (at its top) and the tests."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis")
    shutil.copytree(ROOT / "carl", scratch / "carl", ignore=ignore)
    for package, source in PLUGINS.items():
        shutil.copytree(ROOT / source, scratch / package, ignore=ignore)
    for tests in TEST_DIRS:
        shutil.copytree(ROOT / tests, scratch / tests, ignore=ignore)
    return scratch


def scratch_env(scratch: Path) -> dict[str, str]:
    """One thread, no plugins from entry points, temporary folders inside the scratch copy, and no
    PYTHONPATH: the scratch copy's packages must shadow the installed ones."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    (scratch / "tmp").mkdir(exist_ok=True)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", CARL_PLUGINS="",
               TMPDIR=str(scratch / "tmp"))
    return env


def prepare(name: str, module: Module) -> Path:
    """A fresh scratch copy with a ``[tool.mutmut]`` section for ``module``."""
    scratch = copy_sources(SCRATCH / name)
    section = "\n".join([
        "", "[tool.mutmut]",
        f"source_paths = {json.dumps(['carl', *PLUGINS])}",
        f"only_mutate = {json.dumps(list(module.files))}",
        f"also_copy = {json.dumps(list(TEST_DIRS))}",
        f"pytest_add_cli_args_test_selection = {json.dumps(list(module.tests))}",
        # one pytest session per mutant: keep none of their temporary folders (training runs
        # write checkpoints, and a module's run would otherwise leave tens of GB behind)
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-W", "ignore", "-o", "tmp_path_retention_policy=none"]',
        "use_git_change_detection = false",
        "",
    ])
    pyproject = (ROOT / "pyproject.toml").read_text()
    (scratch / "pyproject.toml").write_text(pyproject.split("\n[tool.mutmut]")[0] + section)
    return scratch


def run_module(name: str, jobs: int, sample: int | None, seed: int) -> dict:
    module = MODULES[name]
    scratch = prepare(name, module)
    env = scratch_env(scratch)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(jobs), str(sample or 0), str(seed)]
    start = time.perf_counter()
    log = scratch / "mutmut.log"
    with log.open("w") as out:
        code = subprocess.call(command, cwd=scratch, env=env, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"mutmut failed on module '{name}' (exit {code}); log: {log}\n{tail}")
    shutil.rmtree(scratch / "tmp", ignore_errors=True)
    result = json.loads((scratch / "result.json").read_text())
    result["seconds"] = time.perf_counter() - start
    return result


def equivalents() -> dict[str, str]:
    """``mutant name -> mutated line`` from the table of ``tests/mutation_equivalent.md``."""
    found = {}
    for line in EQUIVALENT.read_text().splitlines() if EQUIVALENT.exists() else []:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and "__mutmut_" in cells[0]:
            found[cells[0].strip("`")] = cells[1].strip("`").strip()
    return found


def score(name: str, result: dict, listed: dict[str, str]) -> dict:
    statuses: dict[str, str] = result["statuses"]
    survivors = {k: d for k, d in result["diffs"].items() if statuses[k] not in KILLED}
    equivalent = {k for k, diff in survivors.items() if k in listed and listed[k] in added_lines(diff)}
    counted = [k for k, s in statuses.items() if s != "skipped" and k not in equivalent]
    killed = sum(statuses[k] in KILLED for k in counted)
    return {
        "module": name, "mutants": len(statuses), "tested": len(counted), "killed": killed,
        "equivalent": len(equivalent), "survived": len(counted) - killed,
        "score": 100.0 * killed / len(counted) if counted else 100.0,
        "survivors": {k: d for k, d in survivors.items() if k not in equivalent},
        # listed as equivalent but killed, or its line no longer reads as listed: update the list
        "stale": sorted(k for k in listed if k in statuses and k not in equivalent),
        "seconds": result["seconds"], "sampled": result["sampled"],
    }


def statuses_word(key: str, row: dict) -> str:
    return "survives with another line" if key in row["survivors"] else "killed"


def added_lines(diff: str) -> list[str]:
    return [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"modules to mutate (default: all): {', '.join(MODULES)}")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested in parallel (default 2)")
    parser.add_argument("--sample", type=int, default=None, help="test a random sample of N mutants per module")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--list", action="store_true", help="list the modules, their files and tests")
    parser.add_argument("--quiet", action="store_true", help="do not print the survivors' diffs")
    parser.add_argument("--planted", action="store_true",
                        help="run the hand-planted bugs of scripts/planted_bugs.py instead (names: modules or cases)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per planted bug (a timeout counts as caught)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the planted run's check that the tests pass")
    args = parser.parse_args(argv)
    if args.planted:
        planted_table(run_planted(args.modules, args.timeout, not args.no_baseline))
        return 0
    if args.list:
        for name, module in MODULES.items():
            print(f"{name:9} {' '.join(module.files):52} <- {' '.join(module.tests)}")
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module {unknown[0]!r}; modules: {', '.join(MODULES)}")
    listed, rows = equivalents(), []
    for name in args.modules or list(MODULES):
        print(f"mutation: {name} ...", flush=True)
        row = score(name, run_module(name, args.jobs, args.sample, args.seed), listed)
        rows.append(row)
        if not args.quiet:
            for key, diff in row["survivors"].items():
                print(f"\nsurvived: {key}\n{diff}")
        for key in row["stale"]:
            print(f"stale entry of {EQUIVALENT.name}: {key} ({statuses_word(key, row)})")
        print(f"mutation: {name}: {row['score']:.1f}% ({row['killed']} killed of {row['tested']}, "
              f"{row['equivalent']} equivalent, {row['seconds'] / 60:.1f} min)", flush=True)
    print(f"\n{'module':10} {'mutants':>8} {'killed':>7} {'survived':>9} {'equivalent':>11} {'score':>7} {'minutes':>8}")
    for r in rows:
        mutants = f"{r['tested'] + r['equivalent']}" + ("*" if r["sampled"] else "")
        print(f"{r['module']:10} {mutants:>8} {r['killed']:>7} {r['survived']:>9} {r['equivalent']:>11} "
              f"{r['score']:>6.1f}% {r['seconds'] / 60:>8.1f}")
    if any(r["sampled"] for r in rows):
        print("* a random sample of the module's mutants")
    return 0


# ---------------------------------------------------------------------------------------------
# Planted bugs: realistic semantic bugs (scripts/planted_bugs.py), one patch at a time

PYTEST = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-W", "ignore",
          "-o", "tmp_path_retention_policy=none"]


def run_planted(selected: list[str], timeout: int, baseline: bool) -> list[dict]:
    """Plant each selected bug (by module or case name; all by default) in one scratch copy, run
    its module's tests, and restore the file. Caught: the tests fail (or time out); missed: they
    pass. A case whose text is no longer in its file stops the run."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from planted_bugs import PLANTED

    cases = [c for c in PLANTED if not selected or c.module in selected or c.name in selected]
    tests = {c.name: c.tests or MODULES[c.module].tests for c in cases}
    scratch = copy_sources(SCRATCH / "planted")
    shutil.copy(ROOT / "pyproject.toml", scratch / "pyproject.toml")
    env, log = scratch_env(scratch), scratch / "planted.log"
    for case in cases:
        count = (scratch / case.file).read_text().count(case.old)
        if count != 1:
            raise SystemExit(f"planted bug '{case.name}': its text is found {count} times in {case.file} (once "
                             f"expected); update the case in scripts/planted_bugs.py")
    if baseline:  # the tests must pass before any bug is planted, or every case would look caught
        union = union_of([tests[c.name] for c in cases])
        with log.open("a") as out:
            if subprocess.call(PYTEST + union, cwd=scratch, env=env, stdout=out, stderr=subprocess.STDOUT):
                raise SystemExit(f"the tests fail without any planted bug; log: {log}")
    rows = []
    for case in cases:
        path = scratch / case.file
        original = path.read_text()
        path.write_text(original.replace(case.old, case.new))
        start = time.perf_counter()
        try:
            with log.open("a") as out:
                out.write(f"\n===== {case.name}\n")
                out.flush()
                code = subprocess.call(PYTEST + list(tests[case.name]), cwd=scratch, env=env, stdout=out,
                                       stderr=subprocess.STDOUT, timeout=timeout)
            status = {0: "missed", 1: "caught", 5: "no tests"}.get(code, f"caught (pytest exit {code})")
        except subprocess.TimeoutExpired:
            status = "caught (timeout)"
        finally:
            path.write_text(original)
        rows.append({"name": case.name, "module": case.module, "status": status, "why": case.why,
                     "seconds": time.perf_counter() - start})
        print(f"planted: {case.name:40} {status:18} {rows[-1]['seconds']:6.1f} s  ({case.module})", flush=True)
    shutil.rmtree(scratch / "tmp", ignore_errors=True)
    (SCRATCH / "planted.json").write_text(json.dumps(rows, indent=1))
    return rows


def union_of(selections: list[tuple[str, ...]]) -> list[str]:
    """One pytest selection running every test of ``selections`` (``--deselect X`` pairs kept whole)."""
    paths, deselected = {}, {}
    for args in selections:
        items = iter(args)
        for arg in items:
            (deselected if arg == "--deselect" else paths)[next(items) if arg == "--deselect" else arg] = None
    return [*paths, *(a for d in deselected for a in ("--deselect", d))]


def planted_table(rows: list[dict]) -> None:
    modules: dict[str, list[dict]] = {}
    for r in rows:
        modules.setdefault(r["module"], []).append(r)
    print(f"\n{'module':12} {'planted':>8} {'caught':>7}")
    for name, group in modules.items():
        print(f"{name:12} {len(group):>8} {sum(r['status'].startswith('caught') for r in group):>7}")
    caught = sum(r["status"].startswith("caught") for r in rows)
    print(f"{'all':12} {len(rows):>8} {caught:>7}  ({100.0 * caught / max(1, len(rows)):.1f}%)")
    for r in rows:
        if not r["status"].startswith("caught"):
            print(f"{r['status']}: {r['name']} ({r['module']}): {r['why']}")


# ---------------------------------------------------------------------------------------------
# The worker: runs inside a scratch copy, in its own process


def allow_no_grad_functions() -> None:
    """Let mutmut mutate functions whose only decorator is ``@torch.no_grad()``: mutmut keeps
    decorators on its trampoline, so the mutants still run without autograd."""
    import libcst as cst
    from mutmut.mutation import file_mutation
    from libcst.metadata import PositionProvider

    skip = file_mutation.MutationVisitor._skip_node_and_children

    def no_grad(decorator: cst.Decorator) -> bool:
        return re.fullmatch(r"torch\.no_grad\(\)", cst.Module([]).code_for_node(decorator.decorator)) is not None

    def patched(self, node: cst.CSTNode) -> bool:
        if isinstance(node, cst.FunctionDef) and node.decorators and all(map(no_grad, node.decorators)):
            position = self.get_metadata(PositionProvider, node, None)
            if position and position.start.line in self._ignored_node_lines:
                self.ignored_functions.add(node.name.value)
                return True
            return node.name.value in file_mutation.NEVER_MUTATE_FUNCTION_NAMES
        return skip(self, node)

    file_mutation.MutationVisitor._skip_node_and_children = patched


def worker(jobs: int, sample: int, seed: int) -> None:
    import mutmut
    import mutmut.__main__ as mm
    from mutmut.mutation.data import SourceFileMutationData

    if mutmut.__version__ != MUTMUT_VERSION:
        raise SystemExit(f"scripts/mutation.py is written for mutmut {MUTMUT_VERSION}, found {mutmut.__version__}: "
                         f"pip install -e '.[mutation]'")
    allow_no_grad_functions()
    for package in PLUGINS:  # made before any import, so the import system sees the folders
        (Path("mutants") / package).mkdir(parents=True, exist_ok=True)

    def all_mutants() -> dict[str, SourceFileMutationData]:
        found = {}
        for path in mm.walk_mutatable_files():
            data = SourceFileMutationData(path=path)
            data.load()
            found.update({key: data for key in data.exit_code_by_key})
        return found

    names: list[str] = []
    if sample:
        mm.set_mutant_under_test("mutant_generation")
        mm.copy_src_dir()
        mm.copy_also_copy_files()
        mm.create_mutants(jobs)
        everything = sorted(all_mutants())
        names = sorted(random.Random(seed).sample(everything, min(sample, len(everything))))
    try:
        mm._run(names, jobs)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    mutants = all_mutants()
    statuses = {k: mm.status_by_exit_code[d.exit_code_by_key[k]] for k, d in mutants.items() if not names or k in names}
    diffs = {k: mm.get_diff_for_mutant(k, path=mutants[k].path) for k, s in statuses.items() if s not in KILLED}
    Path("result.json").write_text(json.dumps({"statuses": statuses, "diffs": diffs, "sampled": bool(sample)}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(*map(int, sys.argv[2:5]))
    else:
        sys.exit(main())
