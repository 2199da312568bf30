"""Reading a model folder fails in one line naming the file: a malformed recipe.yaml, a repo that
is not in the Hub cache when offline."""

import pytest

import carl
from carl.cli import main
from carl.errors import CarlError
from carl.model import ContinuousAR, open_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return carl.train("tiny", ["train.max_steps=1", "train.tracker=none"], output=tmp_path_factory.mktemp("t"),
                      progress=False)


@pytest.mark.parametrize("text, why", [("model: [unclosed", "ParserError"), ("a: 1\na: 2\n", "DuplicateKeyError"),
                                       ("train: {lr: inf}\n", "")])
def test_a_malformed_recipe_is_one_line_naming_the_file(trained, tmp_path, text, why, capsys):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(trained, folder, ignore=shutil.ignore_patterns("checkpoints"))
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
