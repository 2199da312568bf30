"""The model folder format (:mod:`carl.model.folder`): one complete folder whoever writes it
(training, save_pretrained, push_to_hub, carl push), read back by from_pretrained and `carl sample`;
carl.json and the files beside the weights; what each wrong folder is told; strict, quiet,
pickle-free loading (the Hub mixin's arguments: test_hub_mixin.py)."""

import json
import shutil
from datetime import date
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import carl
import carl.model.folder as folder_format
from carl.api import push
from carl.cli import app
from carl.config import load_recipe
from carl.errors import CarlError, RecipeError, WeightsError
from carl.model import ContinuousAR, load_model, open_model
from carl.model.folder import (
    check_requirements, is_checkpoint, local_folder, missing_plugins, read_config, requirements, write_model_folder_extras,
)
from carl.plugins import PluginInfo
from carl.remote import resolve_folder
from carl.testing import only_plugins

from helpers import copy, message
from carl.cli import main


# ---------------------------------------------------------------------------------------------
# One complete folder, whoever writes it


REQUIRED = {"config.json", "model.safetensors", "carl.json", "README.md"}


class FakeHub:
    """HfApi's two calls a push makes; the uploaded folder is copied to ``into/<repo name>``."""

    def __init__(self, into: Path, token=None):
        self.into = into

    def create_repo(self, repo_id, private=False, exist_ok=False):
        assert exist_ok

    def upload_folder(self, folder_path, repo_id, commit_message):
        shutil.copytree(folder_path, self.into / repo_id.split("/")[1])
        return f"https://huggingface.co/{repo_id}/commit/1"


def tokens(model, seed=0):
    return model.generate(torch.arange(4), generator=torch.Generator().manual_seed(seed), return_tokens=True)


def check_folder(folder: Path, location: str, reference: ContinuousAR) -> str:
    """The folder is complete, its card real, and it loads to the same model."""
    assert REQUIRED <= {p.name for p in folder.iterdir()}, sorted(p.name for p in folder.iterdir())
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: carl\n") and "score-energy" in card
    for placeholder in ("REPO_ID", "More Information Needed", "pip install carl\n", "pip install carl "):
        assert placeholder not in card
    assert "pip install 'carl>=0.1.0'" in card and f"ContinuousAR.from_pretrained({location!r})" in card
    assert f"carl sample {location}" in card
    assert json.loads((folder / "carl.json").read_text()) == {"carl": carl.__version__, "plugins": {}}
    model = ContinuousAR.from_pretrained(folder)
    for (key, a), (_, b) in zip(reference.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), key
    torch.testing.assert_close(tokens(model), tokens(reference), rtol=0, atol=0)
    return card


def test_every_writer_makes_the_same_complete_folder(four_steps, tmp_path, monkeypatch):
    import huggingface_hub

    reference = ContinuousAR.from_pretrained(four_steps)
    card = check_folder(four_steps, str(four_steps), reference)  # 1. training
    assert "## Measured in training" in card and "| steps | 4 |" in card and "```yaml" in card
    assert (four_steps / "recipe.yaml").exists() and (four_steps / "results.json").exists()

    reference.save_pretrained(tmp_path / "saved")  # 2. save_pretrained, no recipe
    card = check_folder(tmp_path / "saved", str(tmp_path / "saved"), reference)
    assert "Saved from Python without a training recipe" in card and not (tmp_path / "saved" / "recipe.yaml").exists()

    recipe = open_model(four_steps).recipe  # 3. save_pretrained with the recipe
    reference.save_pretrained(tmp_path / "with-recipe", recipe=recipe)
    check_folder(tmp_path / "with-recipe", str(tmp_path / "with-recipe"), reference)
    assert open_model(tmp_path / "with-recipe").recipe == recipe
    with pytest.raises(ValueError, match="the recipe's model section is not this model's config"):
        reference.save_pretrained(tmp_path / "mismatch", recipe=carl.load_recipe("tiny", ["model.backbone.width=64"]))
    assert not (tmp_path / "mismatch").exists()

    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: FakeHub(tmp_path / "hub", token))
    url = reference.push_to_hub("me/pushed")  # 4. push_to_hub: the card loads it from the repo
    assert url.startswith("https://huggingface.co/me/pushed")
    check_folder(tmp_path / "hub" / "pushed", "me/pushed", reference)

    push(four_steps, "me/cli-pushed", api=FakeHub(tmp_path / "hub"))  # 5. carl push of the training folder
    card = check_folder(tmp_path / "hub" / "cli-pushed", "me/cli-pushed", reference)
    assert str(four_steps) not in card and "| steps | 4 |" in card


def test_folder_round_trip_keeps_weights_and_samples(six_steps, tmp_path):
    model, recipe = load_model(six_steps)
    model.save_pretrained(tmp_path / "copy")
    again = ContinuousAR.from_pretrained(tmp_path / "copy").eval()
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    torch.testing.assert_close(tokens(model), tokens(again), rtol=0, atol=0)


def test_loads_are_quiet(four_steps, capfd):
    ContinuousAR.from_pretrained(four_steps)
    open_model(four_steps)
    assert capfd.readouterr() == ("", "")


# ---------------------------------------------------------------------------------------------
# carl.json (the plugins a model needs) and the files beside the weights


SERIES = {"timeseries": {"distribution": "carl-timeseries", "version": carl.__version__}}


def test_requirements_name_the_plugins_of_a_recipe_and_of_a_model_config():
    with only_plugins("timeseries"):
        recipe = carl.load_recipe("ts-macro-energy")
        assert requirements(recipe) == {"carl": carl.__version__, "plugins": SERIES}  # tokenizer and data
        assert requirements(recipe.model) == {"carl": carl.__version__, "plugins": SERIES}
    assert requirements(carl.load_recipe("tiny")) == {"carl": carl.__version__, "plugins": {}}  # built-ins only


def test_requirements_fall_back_to_the_plugin_name_without_a_distribution(monkeypatch):
    with only_plugins("timeseries"):
        recipe = carl.load_recipe("ts-macro-energy")
        infos = [PluginInfo("timeseries", "0.3", "carl_timeseries.plugin")]  # e.g. a plugin registered in code
        monkeypatch.setattr("carl.model.folder.plugin_infos", lambda: infos)
        assert requirements(recipe.model)["plugins"] == {"timeseries": {"distribution": "timeseries", "version": "0.3"}}


def test_missing_plugins_installed_absent_or_broken(monkeypatch):
    needs = {"carl": "0.1.0", "plugins": {"audio": {"distribution": "carl-audio", "version": "1.2"}}}
    installed = [PluginInfo("audio", "1.2", "carl_audio.plugin", distribution="carl-audio")]
    monkeypatch.setattr("carl.model.folder.plugin_infos", lambda: installed)
    assert missing_plugins(needs) is None
    assert missing_plugins({"carl": "0.1.0"}) is None  # a carl.json without plugins
    installed[0].error = "ImportError: no module named 'soundfile'"
    assert missing_plugins(needs) == ("this model needs the carl plugin 'audio', which is installed but failed to load: "
                                      "ImportError: no module named 'soundfile'")
    installed.clear()
    assert missing_plugins(needs) == "this model needs the carl plugin 'audio' (version 1.2): pip install 'carl-audio>=1.2'"


def test_check_requirements_reads_carl_json(tmp_path):
    check_requirements(tmp_path)  # no carl.json: nothing to check
    (tmp_path / "carl.json").write_text(json.dumps({"carl": "0.1.0", "plugins": {}}))
    check_requirements(tmp_path)
    (tmp_path / "carl.json").write_text(json.dumps({"plugins": {"audio": {"distribution": "carl-audio", "version": "1"}}}))
    with pytest.raises(CarlError, match=r"^this model needs the carl plugin 'audio' \(version 1\): pip install"):
        check_requirements(tmp_path)


def test_from_pretrained_names_the_plugin_to_install(four_steps, tmp_path):
    folder = tmp_path / "wave"
    shutil.copytree(four_steps, folder, ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((folder / "config.json").read_text())
    config["tokenizer"] = {"name": "wave", "length": 8}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "carl.json").write_text(json.dumps({"carl": "0.1.0", "plugins": {"waves": {"distribution": "carl-waves", "version": "0.2.0"}}}))
    message = "this model needs the carl plugin 'waves' (version 0.2.0): pip install 'carl-waves>=0.2.0'"
    with pytest.raises(CarlError) as python:
        ContinuousAR.from_pretrained(folder)
    assert str(python.value) == message
    result = CliRunner().invoke(app, ["sample", str(folder)])
    assert str(result.exception) == message


def test_extras_are_readable_json_and_a_card_for_the_location(four_steps, tmp_path):
    ContinuousAR.from_pretrained(four_steps).save_pretrained(tmp_path)
    figures = {"loss": 0.25, "date": date(2026, 12, 5)}  # a value JSON cannot hold is written as text
    write_model_folder_extras(tmp_path, figures=figures, location="me/tiny")
    assert (tmp_path / "carl.json").read_text() == json.dumps({"carl": carl.__version__, "plugins": {}}, indent=2)
    assert (tmp_path / "results.json").read_text() == '{\n  "loss": 0.25,\n  "date": "2026-12-05"\n}'
    assert "ContinuousAR.from_pretrained('me/tiny')" in (tmp_path / "README.md").read_text()
    assert not (tmp_path / "recipe.yaml").exists()


# ---------------------------------------------------------------------------------------------
# Wrong folders: what each is told


def test_a_file_is_not_a_folder(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")
    assert message(resolve_folder, file) == f"{file} is a file; give a model folder, a checkpoint folder or a Hub repo id"
    assert message(local_folder, file) == f"{file} is a file, not a model folder"
    assert message(local_folder, tmp_path / "absent") == f"no such folder: {tmp_path / 'absent'}"


def test_a_run_folder_without_its_config_points_to_its_latest_checkpoint(six_steps, tmp_path):
    run = copy(six_steps, tmp_path / "run", checkpoints=True)
    assert len(list((run / "checkpoints").glob("step-*"))) == 3
    (run / "config.json").unlink()
    expected = (f"{run} is not a model folder (no config.json) but holds training checkpoints: "
                f"give one of them, e.g. {run / 'checkpoints' / 'step-0000006'}")
    assert message(local_folder, run) == expected
    assert message(open_model, run) == expected
    assert message(local_folder, tmp_path) == f"{tmp_path} is not a carl model folder (no config.json)"


def test_what_counts_as_a_training_checkpoint(six_steps, tmp_path):
    step = six_steps / "checkpoints" / "step-0000004"
    assert is_checkpoint(step) and not is_checkpoint(six_steps)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy2(step / "ema.safetensors", partial)  # EMA weights without the recipe
    assert not is_checkpoint(partial)
    shutil.copy2(step / "recipe.yaml", partial)
    assert is_checkpoint(partial)
    (partial / "config.json").write_text("{}")  # a model folder that also keeps EMA weights
    assert not is_checkpoint(partial)
    assert message(local_folder, step).startswith(f"{step} is a training checkpoint, not a model folder; ")


def test_a_corrupt_config_is_named_not_blamed_on_the_weights(six_steps, tmp_path):
    folder = copy(six_steps, tmp_path / "broken")
    (folder / "config.json").write_text("{not json")
    expected = f"cannot read {folder / 'config.json'}: JSONDecodeError: "
    assert message(open_model, folder).startswith(expected)
    assert message(ContinuousAR.from_pretrained, folder).startswith(expected)
    with pytest.raises(RecipeError, match=r"unknown recipe key 'config\.typo'"):
        (folder / "config.json").write_text(json.dumps({**read_config(six_steps), "typo": 1}))
        folder_format.write_model_folder_extras(folder)


def test_unreadable_weights_name_the_file_and_the_error(four_steps, tmp_path):
    from carl.errors import WeightsError

    folder = shutil.copytree(four_steps, tmp_path / "cut", ignore=shutil.ignore_patterns("checkpoints"))
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:100])
    with pytest.raises(WeightsError, match=f"^cannot read the weights {folder / 'model.safetensors'}: SafetensorError: "):
        ContinuousAR.from_pretrained(folder)


# ---------------------------------------------------------------------------------------------
# Training checkpoints read with their EMA weights


def test_sample_reads_a_checkpoint_folder_with_its_ema_weights(four_steps, tmp_path):
    step = four_steps / "checkpoints" / "step-0000002"
    ema = load_file(step / "ema.safetensors")
    model = ContinuousAR.from_pretrained(step)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.items()) and not torch.equal(
        model.state_dict()["backbone.pos_embed"], load_file(four_steps / "model.safetensors")["backbone.pos_embed"])
    out = tmp_path / "c.pt"
    result = CliRunner().invoke(app, ["sample", str(step), "--out", str(out), "--labels", "1,3", "--num", "2", "--seed", "5"])
    assert result.exit_code == 0, result.output
    expected = model.generate(torch.tensor([1, 1, 3, 3]), num_steps=8, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(torch.load(out), expected, rtol=0, atol=0)
    result = CliRunner().invoke(app, ["sample", str(four_steps / "checkpoints")])
    assert f"holds training checkpoints: give one of them, e.g. {four_steps / 'checkpoints' / 'step-0000004'}" in str(result.exception)


def test_a_checkpoint_folder_loads_onto_the_asked_device(four_steps, monkeypatch):
    moved = []
    monkeypatch.setattr(ContinuousAR, "to", lambda self, device: moved.append(device) or self)
    ContinuousAR.from_pretrained(four_steps / "checkpoints" / "step-0000002", map_location="meta")
    assert moved == ["meta"]


def test_sample_works_from_a_folder_saved_without_a_recipe(four_steps, tmp_path):
    model = ContinuousAR.from_pretrained(four_steps)
    model.save_pretrained(tmp_path / "saved")
    result = CliRunner().invoke(app, ["sample", str(tmp_path / "saved"), "--out", str(tmp_path / "s.pt"), "--num", "2"])
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "s.pt").shape == (10 * 2, 8, 2)  # carl's default settings: 10 rows
    result = CliRunner().invoke(app, ["sample", str(tmp_path / "saved"), "--out", str(tmp_path / "s.png")])
    assert "saved without a recipe" in str(result.exception) and not (tmp_path / "s.png").exists()


# ---------------------------------------------------------------------------------------------
# Strict loading: a tensor missing or one too many fails in one line naming the file and the keys


@pytest.fixture
def folder(tmp_path):
    cfg = load_recipe("tiny")
    torch.manual_seed(0)
    ContinuousAR(cfg.model).save_pretrained(tmp_path)
    write_model_folder_extras(tmp_path, cfg)
    return tmp_path


def rewrite(folder, change):
    state = load_file(folder / "model.safetensors")
    change(state)
    save_file(state, folder / "model.safetensors")


def test_a_complete_folder_loads_exactly(folder):
    model = ContinuousAR.from_pretrained(folder)
    for key, value in load_file(folder / "model.safetensors").items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_missing_tensor_fails_naming_file_and_key(folder):
    rewrite(folder, lambda state: state.pop("backbone.blocks.1.attn.qkv.weight"))
    with pytest.raises(WeightsError, match=r"model\.safetensors does not fit ContinuousAR: 1 missing: backbone\.blocks\.1\.attn\.qkv\.weight$"):
        ContinuousAR.from_pretrained(folder)
    with pytest.raises(WeightsError, match="1 missing"):
        load_model(folder)


def test_an_extra_tensor_fails_naming_it(folder):
    rewrite(folder, lambda state: state.update({"score.net.extra": torch.zeros(3)}))
    with pytest.raises(WeightsError, match=r"model\.safetensors does not fit ContinuousAR: 1 unexpected: score\.net\.extra$"):
        ContinuousAR.from_pretrained(folder)


def test_carl_sample_refuses_in_one_line(folder, tmp_path_factory):
    rewrite(folder, lambda state: state.pop("conditioner.fake_latent"))
    out = tmp_path_factory.mktemp("grid") / "grid.pt"
    result = CliRunner().invoke(app, ["sample", str(folder), "--out", str(out)])
    assert result.exit_code != 0 and not out.exists()
    assert isinstance(result.exception, WeightsError)  # `carl` prints CarlErrors as one line, no traceback
    message = str(result.exception)
    assert "\n" not in message and str(folder / "model.safetensors") in message and "conditioner.fake_latent" in message


def test_pickled_weights_are_not_read(folder):
    with pytest.raises(WeightsError, match="model.safetensors only"):
        ContinuousAR._load_as_pickle(ContinuousAR(load_recipe("tiny").model), str(folder / "pytorch_model.bin"), "cpu", False)


@pytest.mark.parametrize("text, why", [("model: [unclosed", "ParserError"), ("a: 1\na: 2\n", "DuplicateKeyError"),
                                       ("train: {lr: inf}\n", "")])
def test_a_malformed_recipe_is_one_line_naming_the_file(four_steps, tmp_path, text, why, capsys):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(four_steps, folder, ignore=shutil.ignore_patterns("checkpoints"))
    (folder / "recipe.yaml").write_text(text)
    with pytest.raises(CarlError, match=f"{folder / 'recipe.yaml'}.*{why}"):
        open_model(folder)
    with pytest.raises(SystemExit) as exit_:
        main(["sample", str(folder), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_uncached_repo_offline_is_one_line(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CarlError, match=r"^cannot load 'me/absent' from the Hub: it is not in the Hub cache, and "
                                        r"HF_HUB_OFFLINE is set \(unset it to download\)$"):
        ContinuousAR.from_pretrained("me/absent")


def test_recorded_figures_travel_with_the_model(four_steps, tmp_path):
    import json
    import shutil

    from carl.model.folder import record_results

    folder = tmp_path / "m"
    shutil.copytree(four_steps, folder, ignore=shutil.ignore_patterns("checkpoints"))
    before = json.loads((folder / "results.json").read_text())
    record_results(folder, {"accuracy (1,000 samples, 32 steps)": 0.99})
    record_results(folder, {"FD (1,000 samples, 32 steps)": 7.5, "accuracy (1,000 samples, 32 steps)": 0.985})
    after = json.loads((folder / "results.json").read_text())
    assert after == {**before, "accuracy (1,000 samples, 32 steps)": 0.985, "FD (1,000 samples, 32 steps)": 7.5}
    assert "| FD (1,000 samples, 32 steps) | 7.5 |" in (folder / "README.md").read_text()
    assert '\n  "FD (1,000 samples, 32 steps)": 7.5' in (folder / "results.json").read_text()  # one figure a line, for people and diffs
    (folder / "results.json").write_text("[1, 2]")
    with pytest.raises(CarlError, match="results.json is not a JSON object of figures"):
        record_results(folder, {"x": 1})
