"""Pretrained weights: where a reference points to, how files are read, and strict loading."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import carl.weights
from carl.errors import WeightsError
from carl.weights import first_nonfinite, load_state_file, load_strict, resolve_weights


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake ``hf_hub_download`` that records its calls and answers with a local file."""
    calls = []
    answer = tmp_path / "downloaded.ckpt"
    answer.write_bytes(b"")

    def download(repo, filename, revision=None):
        calls.append((repo, filename, revision))
        return str(answer)

    monkeypatch.setattr(carl.weights, "hf_hub_download", download)
    return calls


def test_local_file_and_folder(tmp_path, hub):
    path = tmp_path / "w.ckpt"
    path.write_bytes(b"x")
    assert resolve_weights(path, "other.ckpt") == path
    assert resolve_weights(str(tmp_path), "w.ckpt") == path
    with pytest.raises(WeightsError, match=f"^{tmp_path} holds no missing.ckpt$"):
        resolve_weights(tmp_path, "missing.ckpt")
    assert hub == []  # nothing local went to the Hub


@pytest.mark.parametrize(
    "reference,expected",
    [
        ("user/repo", ("user/repo", "kl16.ckpt", None)),
        ("user/repo/sub/w.pth", ("user/repo", "sub/w.pth", None)),
        ("hf://user/repo/w.pth", ("user/repo", "w.pth", None)),
        ("https://huggingface.co/user/repo/resolve/main/vae/kl16.ckpt", ("user/repo", "vae/kl16.ckpt", "main")),
        ("https://huggingface.co/user/repo/blob/abc123/w.pth", ("user/repo", "w.pth", "abc123")),
    ],
)
def test_hub_references(reference, expected, hub):
    assert resolve_weights(reference, "kl16.ckpt").name == "downloaded.ckpt"
    assert hub == [expected]


@pytest.mark.parametrize("reference", ["nothing", "/no/such/file.ckpt", "./rel/file.ckpt", "hf://single"])
def test_neither_a_file_nor_a_hub_reference(reference, hub):
    with pytest.raises(WeightsError, match=f"^weights '{reference}': no such file, and not a Hub reference"):
        resolve_weights(reference, "kl16.ckpt")
    assert hub == []


def test_hub_failure_is_one_line(monkeypatch):
    def offline(repo, filename, revision=None):
        raise OSError("offline")

    monkeypatch.setattr(carl.weights, "hf_hub_download", offline)
    with pytest.raises(WeightsError, match=r"^cannot get weights 'user/repo' \(user/repo/w.ckpt\) locally or from the Hub: OSError: offline$"):
        resolve_weights("user/repo", "w.ckpt")


def test_state_files_safetensors_torch_and_nested_model(tmp_path):
    state = {"a": torch.ones(2), "b": torch.zeros(1, 3)}
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "flat.pth")
    torch.save({"model": state, "epoch": 3}, tmp_path / "nested.ckpt")
    torch.save({"model": 5, "a": torch.ones(2)}, tmp_path / "not-nested.ckpt")  # "model" that is no dict: kept whole
    for name in ("w.safetensors", "flat.pth", "nested.ckpt"):
        loaded = load_state_file(tmp_path / name)
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert set(load_state_file(tmp_path / "not-nested.ckpt")) == {"model", "a"}


def test_unreadable_and_non_dict_files(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match=f"^cannot read weights file {tmp_path / 'bad.safetensors'}: "):
        load_state_file(tmp_path / "bad.safetensors")
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match=f"^{tmp_path / 'list.pth'} does not hold a state dict$"):
        load_state_file(tmp_path / "list.pth")


def test_strict_loading_copies_and_lists_every_problem():
    module = nn.Linear(2, 3)
    good = {"weight": torch.full((3, 2), 0.5), "bias": torch.arange(3.0)}
    load_strict(module, good, "good.pth")
    assert torch.equal(module.weight, good["weight"]) and torch.equal(module.bias, good["bias"])

    bad = {"weight": torch.zeros(2, 2), "extra": torch.zeros(1)}
    with pytest.raises(WeightsError) as err:
        load_strict(module, bad, "bad.pth")
    assert str(err.value) == "bad.pth does not fit Linear: 1 missing: bias; 1 unexpected: extra; 1 shape: weight (2, 2) != (3, 2)"


def test_strict_loading_names_the_first_four_of_many():
    module = nn.Sequential(*[nn.Linear(1, 1) for _ in range(3)])  # 6 tensors
    with pytest.raises(WeightsError) as err:
        load_strict(module, {}, "empty")
    assert str(err.value) == "empty does not fit Sequential: 6 missing: 0.weight, 0.bias, 1.weight, 1.bias ..."


class NotAllowListed:  # a pickled object of this class needs code execution to load
    pass


def test_pickled_code_is_refused(tmp_path):
    torch.save({"a": torch.ones(1), "evil": NotAllowListed()}, tmp_path / "code.pth")
    with pytest.raises(WeightsError, match=f"^cannot read weights file {tmp_path / 'code.pth'}: UnpicklingError: "):
        load_state_file(tmp_path / "code.pth")


@pytest.mark.parametrize("count,ellipsis", [(4, False), (5, True)])
def test_strict_loading_marks_only_lists_longer_than_four(count, ellipsis):
    module = nn.ParameterDict({f"p{i}": nn.Parameter(torch.zeros(1)) for i in range(count)})
    with pytest.raises(WeightsError) as err:
        load_strict(module, {}, "empty")
    assert str(err.value).endswith(" ...") == ellipsis and f"{count} missing: p0, p1, p2, p3" in str(err.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_the_first_nonfinite_weight_or_buffer_is_named(bad):
    module = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    module[1].num_batches_tracked += 1  # an integer buffer is never non-finite
    assert first_nonfinite(module) is None
    with torch.no_grad():
        module[1].running_var[1] = bad  # a buffer, not a parameter: a normalisation statistic
    assert first_nonfinite(module) == "1.running_var"
    with torch.no_grad():
        module[0].weight[0, 1] = bad
    assert first_nonfinite(module) == "0.weight"  # the first in state-dict order
