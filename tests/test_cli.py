"""The command line as a user meets it (:mod:`carl.cli`): usage errors in click's short form, user
errors in one line (tracebacks only with --debug) and exit codes passed on, --version, help on
every option, `--out` that writes exactly the file asked for or refuses, and `carl tokenizer
scale`."""

import shutil
import subprocess
import sys

import pytest
import torch
import typer
from typer.testing import CliRunner

import carl.cli.program as cli_program
from carl.api import train
from carl.cli import app, main
from carl.config import load_recipe
from carl.data import ToyConfig, ToySequences
from carl.testing import options_without_help
from carl.tokenizers.pretrained import load_tokenizer, save_tokenizer
from helpers import run_cli as run


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train"], "Error: Missing argument 'recipe'."),
        (["foo"], "Error: No such command 'foo'."),
        (["trian", "tiny"], "Error: No such command 'trian'. Did you mean 'train'?"),
        (["sample", "x", "--bogus"], "Error: No such option: --bogus"),
        (["sample", "x", "--num", "abc"], "Error: Invalid value for '--num'"),
    ],
)
def test_usage_errors_are_short(argv, message, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2 and "Traceback" not in out + err
    assert err.startswith("Usage: carl") and message in err and len(err.splitlines()) <= 5, err


def test_version(capsys):
    from carl import __version__

    assert run(["--version"], capsys) == (0, f"carl {__version__}\n", "")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["push", "runs/nonexistent", "me/x"], "error: no such folder: runs/nonexistent"),
        (["sample", "./nowhere"], "error: no such folder: nowhere"),
        (["sample", "a/b/c"], "error: no such folder: a/b/c"),
    ],
)
def test_local_paths_are_never_looked_up_on_the_hub(argv, message, capsys, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("a local path was looked up on the Hub")

    monkeypatch.setattr("carl.remote.snapshot_download", no_hub)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", no_hub)
    code, out, err = run(argv, capsys)
    assert (code, err) == (1, message + "\n")


def test_a_folder_without_config_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    code, _, err = run(["sample", str(tmp_path)], capsys)
    assert (code, err) == (1, f"error: {tmp_path} is not a carl model folder (no config.json)\n")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    return train(load_recipe("tiny", ["train.max_steps=2", "train.checkpoint_every=null"]), output=out, progress=False)


@pytest.mark.parametrize(
    "exc, message",
    [
        (ConnectionError("[Errno -2] Name or service not known"),
         "cannot reach huggingface.co; check the network connection (or HTTPS_PROXY) and try again"),
        (None, "HF_HUB_OFFLINE is set; unset it to reach the Hub"),  # the suite runs with HF_HUB_OFFLINE=1
    ],
)
def test_push_without_network_is_one_line_saying_what_to_do(exc, message, tiny_run, capsys, monkeypatch):
    import huggingface_hub

    if exc is not None:
        def create_repo(*args, **kwargs):
            raise exc

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    code, _, err = run(["push", str(tiny_run), "me/tiny"], capsys)
    assert (code, err) == (1, f"error: cannot push to me/tiny: {message}\n")


def test_debug_shows_the_traceback(tmp_path):
    from carl.errors import CarlError

    with pytest.raises(CarlError, match="not a carl model folder"):
        main(["--debug", "sample", str(tmp_path)])


def test_every_option_has_help():
    assert options_without_help(app) == []
    bare = typer.Typer()
    bare.command()(lambda seed: None)  # the check itself finds what lacks help
    assert options_without_help(bare) == ["carl seed"]


def test_out_writes_exactly_the_file_asked_for_or_refuses(tiny_run, tmp_path, capsys, monkeypatch):
    target = tmp_path / "new" / "dir" / "grid.pt"  # parent folders are created
    code, out, _ = run(["sample", str(tiny_run), "--out", str(target), "--num", "2", "--seed", "1"], capsys)
    assert code == 0 and out.endswith(f"wrote {target}\n") and torch.load(target).shape == (8, 8, 2)
    before = target.read_bytes()
    code, _, err = run(["sample", str(tiny_run), "--out", str(target)], capsys)  # never overwritten silently
    assert (code, err) == (1, f"error: {target} exists; pass --overwrite to replace it, or choose another --out\n")
    assert target.read_bytes() == before
    code, _, _ = run(["sample", str(tiny_run), "--out", str(target), "--num", "3", "--overwrite"], capsys)
    assert code == 0 and torch.load(target).shape == (12, 8, 2)
    # Data that draws no pictures: a .png is refused, and nothing else is written in its place.
    monkeypatch.setattr("carl.data.ToySequences.render", lambda self, data: None)
    picture = tmp_path / "grid.png"
    code, _, err = run(["sample", str(tiny_run), "--out", str(picture)], capsys)
    assert code == 1 and err.startswith(f"error: cannot write {picture}: ") and "write them as a tensor" in err
    assert err.rstrip().endswith(f"--out {tmp_path / 'grid.pt'}") and sorted(p.name for p in tmp_path.iterdir()) == ["new"]
    code, _, err = run(["sample", str(tiny_run), "--out", str(tmp_path / "grid.txt")], capsys)
    assert code == 1 and "give a picture (.png, .jpg, .jpeg, .webp) or a tensor file (.pt)" in err


def test_cli_errors_are_one_line():
    proc = subprocess.run(
        [sys.executable, "-c", "from carl.cli import main; main()", "train", "tiny", "train.lrr=1"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown recipe key 'train.lrr'")
    assert "Traceback" not in proc.stderr


def test_the_command_line_passes_on_an_exit_code_typer_returns(monkeypatch):
    monkeypatch.setattr(cli_program, "app", lambda **kwargs: 130)  # what typer returns on Ctrl-C
    monkeypatch.setattr("carl.plugins.register_commands", lambda app: None)
    with pytest.raises(SystemExit) as info:
        cli_program.main()
    assert info.value.code == 130


def test_scale_command_measures_and_writes(tiny_ae, tmp_path):
    folder = tmp_path / "ae"
    shutil.copytree(tiny_ae, folder, ignore=shutil.ignore_patterns("checkpoints"))
    tok = load_tokenizer(folder)
    tok.latent_scale.mul_(3.0)  # a tokenizer whose stored scale is off
    save_tokenizer(tok, "autoencoder", folder)
    args = ["tokenizer", "scale", "tiny", f"model.tokenizer={{name: autoencoder, path: {folder}}}", "--samples", "512"]
    result = CliRunner().invoke(app, args + ["--write"])
    assert result.exit_code == 0, result.output
    assert "std 3.0" in result.output or "std 2.9" in result.output, result.output
    fixed = load_tokenizer(folder)
    x = ToySequences(ToyConfig(num_samples=512)).dataset()[:512]["data"]
    assert abs(float(fixed.train().encode(x).std()) - 1) < 0.1


@pytest.mark.parametrize("error, line", [
    (ValueError("a bad value\nwith a second line"), "error: a bad value ..."),
    (RuntimeError("boom"), "error: RuntimeError: boom (an unexpected error; --debug shows the traceback)"),
    (KeyError("x"), "error: KeyError: 'x' (an unexpected error; --debug shows the traceback)"),
])
def test_any_error_is_one_line_and_debug_shows_the_traceback(error, line, capsys, monkeypatch):
    import carl.cli.program as program

    def app(**kwargs):
        raise error

    monkeypatch.setattr(program, "app", app)
    monkeypatch.setattr("carl.plugins.register_commands", lambda app: None)
    assert run(["recipes", "list"], capsys) == (1, "", line + "\n")
    with pytest.raises(type(error)):
        program.main(["--debug", "recipes", "list"])
