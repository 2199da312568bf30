"""A model folder written by the previous carl (0.1, the flat layout of commit 3d151e5) still loads
and samples: ``tests/data/carl-0.1-tiny/`` is the model folder of that version's ``carl train tiny``
(without its checkpoints and logs), ``tests/data/carl-0.1-tiny-samples.safetensors`` the samples
that version drew from it (how both were made: tests/data/README.md)."""

from pathlib import Path

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from carl.cli import app
from carl.model import ContinuousAR, open_model

DATA = Path(__file__).resolve().parent.parent / "data"
FOLDER = DATA / "carl-0.1-tiny"
# Bit-exact on the machine that drew them; another CPU may round a matmul differently.
TOL = dict(rtol=1e-4, atol=1e-5)


def old_samples() -> dict[str, torch.Tensor]:
    return load_file(DATA / "carl-0.1-tiny-samples.safetensors")


def test_from_pretrained_reads_it_and_draws_what_carl_0_1_drew():
    model = ContinuousAR.from_pretrained(FOLDER)
    assert not model.training
    drawn = model.generate(torch.arange(4), generator=torch.Generator().manual_seed(0))
    guided = model.generate(torch.tensor([0, 2]), cfg=2.0, temperature=0.7, generator=torch.Generator().manual_seed(1),
                            return_tokens=True)
    old = old_samples()
    assert old["generate"].abs().mean() > 0.1  # a trained head's samples, not the untrained head's zeros
    torch.testing.assert_close(drawn, old["generate"], **TOL)
    torch.testing.assert_close(guided, old["generate_cfg"], **TOL)


def test_carl_sample_reads_it_and_draws_what_carl_0_1_drew(tmp_path):
    out = tmp_path / "samples.pt"
    result = CliRunner().invoke(app, ["sample", str(FOLDER), "--out", str(out), "--labels", "1,3", "--num", "2", "--seed", "5"])
    assert result.exit_code == 0, result.output
    torch.testing.assert_close(torch.load(out), old_samples()["carl_sample"], **TOL)


def test_its_recipe_and_requirements_are_read():
    loaded = open_model(FOLDER)
    assert loaded.folder == FOLDER and loaded.recipe.train.max_steps == 60 and loaded.recipe.output == "tiny-0.1"
    assert loaded.sample.num_steps == 8 and type(loaded.data_source()).__name__ == "ToySequences"
    assert loaded.model.config == ContinuousAR.from_pretrained(FOLDER).config
