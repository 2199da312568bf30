"""One model-folder format, whoever writes it (training, save_pretrained, push_to_hub, carl push),
read back by from_pretrained and `carl sample`; checkpoint folders; quiet loads; missing plugins."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import carl
from carl.cli import app
from carl.api import push
from carl.model import open_model
from carl.model import ContinuousAR
from carl.errors import CarlError

REQUIRED = {"config.json", "model.safetensors", "carl.json", "README.md"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return carl.train("tiny", {"train.max_steps": 4, "train.checkpoint_every": 2}, output=out, progress=False)


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


def test_every_writer_makes_the_same_complete_folder(trained, tmp_path, monkeypatch):
    import huggingface_hub

    reference = ContinuousAR.from_pretrained(trained)
    card = check_folder(trained, str(trained), reference)  # 1. training
    assert "## Measured in training" in card and "| steps | 4 |" in card and "```yaml" in card
    assert (trained / "recipe.yaml").exists() and (trained / "results.json").exists()

    reference.save_pretrained(tmp_path / "saved")  # 2. save_pretrained, no recipe
    card = check_folder(tmp_path / "saved", str(tmp_path / "saved"), reference)
    assert "Saved from Python without a training recipe" in card and not (tmp_path / "saved" / "recipe.yaml").exists()

    recipe = open_model(trained).recipe  # 3. save_pretrained with the recipe
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

    push(trained, "me/cli-pushed", api=FakeHub(tmp_path / "hub"))  # 5. carl push of the training folder
    card = check_folder(tmp_path / "hub" / "cli-pushed", "me/cli-pushed", reference)
    assert str(trained) not in card and "| steps | 4 |" in card


def test_sample_works_from_a_folder_saved_without_a_recipe(trained, tmp_path):
    model = ContinuousAR.from_pretrained(trained)
    model.save_pretrained(tmp_path / "saved")
    result = CliRunner().invoke(app, ["sample", str(tmp_path / "saved"), "--out", str(tmp_path / "s.pt"), "--num", "2"])
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "s.pt").shape == (10 * 2, 8, 2)  # carl's default settings: 10 rows
    result = CliRunner().invoke(app, ["sample", str(tmp_path / "saved"), "--out", str(tmp_path / "s.png")])
    assert "saved without a recipe" in str(result.exception) and not (tmp_path / "s.png").exists()


def test_sample_reads_a_checkpoint_folder_with_its_ema_weights(trained, tmp_path):
    step = trained / "checkpoints" / "step-0000002"
    ema = load_file(step / "ema.safetensors")
    model = ContinuousAR.from_pretrained(step)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.items()) and not torch.equal(
        model.state_dict()["backbone.pos_embed"], load_file(trained / "model.safetensors")["backbone.pos_embed"])
    out = tmp_path / "c.pt"
    result = CliRunner().invoke(app, ["sample", str(step), "--out", str(out), "--labels", "1,3", "--num", "2", "--seed", "5"])
    assert result.exit_code == 0, result.output
    expected = model.generate(torch.tensor([1, 1, 3, 3]), num_steps=8, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(torch.load(out), expected, rtol=0, atol=0)
    result = CliRunner().invoke(app, ["sample", str(trained / "checkpoints")])
    assert f"holds training checkpoints: give one of them, e.g. {trained / 'checkpoints' / 'step-0000004'}" in str(result.exception)


def test_loads_are_quiet(trained, capfd):
    ContinuousAR.from_pretrained(trained)
    open_model(trained)
    assert capfd.readouterr() == ("", "")


def test_from_pretrained_names_the_plugin_to_install(trained, tmp_path):
    folder = tmp_path / "wave"
    shutil.copytree(trained, folder, ignore=shutil.ignore_patterns("checkpoints"))
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


def test_public_api_is_documented():
    assert ContinuousAR.__doc__.startswith("A continuous autoregressive model: tokenizer + conditioner")
    for method in (ContinuousAR.__init__, ContinuousAR.from_pretrained, ContinuousAR.save_pretrained,
                   ContinuousAR.push_to_hub, ContinuousAR.generate, carl.train.__call__):
        assert method.__doc__ and "Initialize internal Module state" not in method.__doc__, method
    from carl.api import train

    assert "Args:" in train.__doc__ and "Returns:" in ContinuousAR.from_pretrained.__doc__


def test_python_train_takes_a_name_a_path_or_a_config(tmp_path):
    from carl.api import resolve
    from carl.config import RecipeConfig, load_recipe, resolve_recipe_path

    by_name = resolve("tiny", ["train.max_steps=3", "sample.cfg=2.0"])
    assert isinstance(by_name, RecipeConfig) and (by_name.train.max_steps, by_name.sample.cfg) == (3, 2.0)
    assert resolve(resolve_recipe_path("tiny"), {"train.max_steps": 3, "sample.cfg": 2.0}) == by_name
    assert resolve(load_recipe("tiny"), ["train.max_steps=3", "sample.cfg=2.0"]) == by_name
    with pytest.raises(CarlError, match="unknown recipe key 'train.lrr'"):
        resolve("tiny", {"train.lrr": 1})
    from carl import train  # the same callable whichever way it is imported

    assert train is carl.train and callable(train)
