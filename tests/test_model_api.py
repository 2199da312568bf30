"""ContinuousAR's public surface: generate's defaults and what reaches the order, the progress bar
and the scoring rule; what training hands the conditioner; save_pretrained / push_to_hub /
from_pretrained passing every argument on to the Hub."""

import dataclasses
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import carl
import carl.model.ar as model_module
import carl.progress as progress
from carl.config import Component, load_recipe
from carl.model import ContinuousAR
from carl.model.ar import _with_resolved_tokenizer
from carl.model import generation
from carl.model.generation import static_by_default


@pytest.fixture
def model() -> ContinuousAR:
    torch.manual_seed(0)
    return ContinuousAR(load_recipe("tiny").model)


@pytest.fixture
def masked() -> ContinuousAR:
    torch.manual_seed(0)
    return ContinuousAR(load_recipe("tiny", ["model.order=masked"]).model)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    return carl.train("tiny", {"train.max_steps": 2, "train.checkpoint_every": 2}, output=out, progress=False)


def spy(monkeypatch, owner, name: str) -> list:
    """Record every call of ``owner.name`` (args, kwargs) and let it run."""
    calls, original = [], getattr(owner, name)

    def recorded(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, recorded)
    return calls


# ---------------------------------------------------------------------------------------------
# generate


def test_generate_defaults(masked, monkeypatch):
    schedules = spy(monkeypatch, masked.order, "schedule")
    draws = spy(monkeypatch, masked.score, "sample")
    decodes = spy(monkeypatch, masked.tokenizer, "decode")
    bars = spy(monkeypatch, progress, "tqdm")
    out = masked.generate(torch.arange(2), generator=torch.Generator().manual_seed(0))
    assert schedules == [((masked.tokenizer.num_tokens, 64), {})]  # num_steps 64
    assert all(kw["temperature"] == 1.0 and kw["guidance"] is None for _, kw in draws)  # no CFG, temperature 1
    assert len(decodes) == 1 and torch.equal(decodes[0][0][0], masked.generate(
        torch.arange(2), generator=torch.Generator().manual_seed(0), return_tokens=True))  # decoded by default
    assert out.shape == (2, 8, 2)
    assert bars[0][1] == {"desc": "generating", "leave": False, "disable": True}  # no bar by default


def test_the_progress_bar_follows_progress_and_the_terminal(model, monkeypatch):
    bars = spy(monkeypatch, progress, "tqdm")
    monkeypatch.setattr(progress, "interactive", lambda asked: asked)  # as on a terminal
    model.generate(torch.arange(2), progress=True)
    model.generate(torch.arange(2), progress=False)
    model.generate(torch.arange(2))  # no bar unless asked, even on a terminal
    assert [kw["disable"] for _, kw in bars] == [False, True, True]
    assert {(kw["desc"], kw["leave"]) for _, kw in bars} == {("generating", False)}


def test_temperature_and_guidance_reach_the_scoring_rule(model, monkeypatch):
    draws = spy(monkeypatch, model.score, "sample")
    model.generate(torch.arange(3), temperature=0.5, cfg=3.0, cfg_schedule="constant")
    (hidden,), kw = draws[0]
    assert kw["temperature"] == 0.5 and kw["guidance"].scale == 3.0
    assert hidden.shape[0] == 3 and kw["guidance"].uncond.shape == hidden.shape  # conditional half, unconditional half


def test_the_static_cache_is_the_default_on_cuda_only(model, monkeypatch):
    assert static_by_default(torch.device("cuda")) is True and static_by_default(torch.device("cpu")) is False
    decodes = spy(monkeypatch, generation, "generate_causal")
    caches = spy(monkeypatch, model.backbone, "new_cache")
    model.generate(torch.arange(2))
    model.generate(torch.arange(2), static_shapes=True)
    model.generate(torch.arange(2), static_shapes=False)
    assert [kw["static"] for _, kw in decodes] == [False, True, False]
    assert [kw["static"] for _, kw in caches] == [False, True, False]


def test_generate_refuses_what_it_cannot_do_in_one_line(model, masked):
    with pytest.raises(ValueError, match=r"^cfg_schedule must be 'linear' or 'constant', got 'cosine'$"):
        model.generate(torch.arange(2), cfg_schedule="cosine")
    with pytest.raises(ValueError, match=r"^give either condition or batch_size$"):
        model.generate()
    with pytest.raises(ValueError, match=r"^a prompt needs the causal order \(the first positions are the given ones\)$"):
        masked.generate(prompt=torch.zeros(2, 3, 2))


# ---------------------------------------------------------------------------------------------
# training


def test_label_dropout_is_drawn_in_training_only_and_reaches_the_conditioner(model, monkeypatch):
    drops = spy(monkeypatch, model.conditioner, "sample_drop")
    conditioned = spy(monkeypatch, model.conditioner, "forward")
    batch = {"data": torch.randn(4, 8, 2), "condition": torch.tensor([0, 1, 2, 3])}
    model.train().loss(batch)
    assert drops[0][0] == (4, torch.device("cpu"))
    (condition, rows, drop), _ = conditioned[0]
    assert condition is batch["condition"] and rows == 4 and drop.shape == (4,) and drop.dtype == torch.bool
    model.eval().loss(batch)
    assert len(drops) == 1 and conditioned[1][0] == (batch["condition"], 4, None)


# ---------------------------------------------------------------------------------------------
# model folders and the Hub


class RecordingApi:
    def __init__(self, token=None):
        self.token, self.calls = token, []

    def create_repo(self, repo_id, private, exist_ok):
        self.calls.append(("create_repo", repo_id, private))

    def upload_folder(self, folder_path, repo_id, commit_message):
        self.calls.append(("upload_folder", repo_id, commit_message, sorted(p.name for p in Path(folder_path).iterdir())))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/1")


def test_save_pretrained_refuses_another_models_recipe(model, tmp_path):
    other = load_recipe("tiny", ["model.backbone.width=64"])
    with pytest.raises(ValueError) as caught:
        model.save_pretrained(tmp_path / "x", recipe=other)
    assert str(caught.value) == ("save_pretrained: the recipe's model section is not this model's config; "
                                 "give the recipe the model was trained from, or none")


def test_push_to_hub_sends_the_recipe_figures_and_settings(trained, monkeypatch):
    import huggingface_hub

    apis = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: apis.append(RecordingApi(token)) or apis[-1])
    model, recipe = ContinuousAR.from_pretrained(trained), carl.open_model(trained).recipe
    url = model.push_to_hub("me/tiny", recipe=recipe, figures={"loss": 1.0})
    assert url == "https://huggingface.co/me/tiny/commit/1" and apis[0].token is None
    assert apis[0].calls == [("create_repo", "me/tiny", False), ("upload_folder", "me/tiny", "Upload carl model", [
        "README.md", "carl.json", "config.json", "model.safetensors", "recipe.yaml", "results.json"])]
    model.push_to_hub("me/tiny", private=True, token="hf_x", commit_message="v2")
    assert apis[1].token == "hf_x" and apis[1].calls[0][2] is True and apis[1].calls[1][2] == "v2"
    assert "recipe.yaml" not in apis[1].calls[1][3] and "results.json" not in apis[1].calls[1][3]


def test_save_pretrained_can_push_under_the_folders_name(trained, tmp_path, monkeypatch):
    import huggingface_hub

    apis = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: apis.append(RecordingApi(token)) or apis[-1])
    model, recipe = ContinuousAR.from_pretrained(trained), carl.open_model(trained).recipe
    url = model.save_pretrained(tmp_path / "tiny-v1", recipe=recipe, figures={"loss": 1.0}, push_to_hub=True,
                                private=True)
    assert url == "https://huggingface.co/tiny-v1/commit/1"
    assert {"recipe.yaml", "results.json"} <= {p.name for p in (tmp_path / "tiny-v1").iterdir()}
    assert apis[0].calls[0] == ("create_repo", "tiny-v1", True)
    assert {"recipe.yaml", "results.json"} <= set(apis[0].calls[1][3])  # the pushed copy has them too
    model.save_pretrained(tmp_path / "other", push_to_hub=True, repo_id="me/named")
    assert apis[1].calls[0] == ("create_repo", "me/named", False)


@pytest.fixture
def hub_downloads(trained, monkeypatch):
    """hf_hub_download served from ``trained`` (files it lacks are absent on the 'Hub'); the calls are recorded."""
    import huggingface_hub
    import huggingface_hub.hub_mixin
    from huggingface_hub.errors import EntryNotFoundError

    calls = []

    def download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, {k: kwargs.get(k) for k in ("revision", "cache_dir", "token", "force_download",
                                                                    "local_files_only")}))
        if not (trained / filename).is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(trained / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub.hub_mixin, "hf_hub_download", download)
    return calls


def test_from_pretrained_passes_every_hub_argument(trained, hub_downloads):
    model = ContinuousAR.from_pretrained("me/tiny", revision="v1", token="hf_x", cache_dir="/c", force_download=True,
                                         local_files_only=True)
    reference = ContinuousAR.from_pretrained(trained)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    files = [f for _, f, _ in hub_downloads]
    assert {"config.json", "carl.json", "model.safetensors"} <= set(files)
    expected = {"revision": "v1", "cache_dir": "/c", "token": "hf_x", "force_download": True, "local_files_only": True}
    assert all(repo == "me/tiny" and kw == expected for repo, _, kw in hub_downloads)
    hub_downloads.clear()
    ContinuousAR.from_pretrained("me/tiny")
    defaults = {"revision": None, "cache_dir": None, "token": None, "force_download": False, "local_files_only": False}
    assert all(kw == defaults for _, _, kw in hub_downloads)


def serve(monkeypatch, folder: Path) -> None:
    """hf_hub_download answered from ``folder``; a file it lacks is absent on the 'Hub'."""
    import huggingface_hub
    import huggingface_hub.hub_mixin
    from huggingface_hub.errors import EntryNotFoundError

    def download(repo_id, filename, **kwargs):
        if not (folder / filename).is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub.hub_mixin, "hf_hub_download", download)


def test_from_pretrained_on_the_hub_without_carl_json_or_weights(trained, tmp_path, monkeypatch):
    folder = shutil.copytree(trained, tmp_path / "no-carl-json", ignore=shutil.ignore_patterns("checkpoints"))
    (folder / "carl.json").unlink()
    serve(monkeypatch, folder)
    assert isinstance(ContinuousAR.from_pretrained("me/no-carl-json"), ContinuousAR)  # carl.json is optional
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"^me/no-carl-json has no model.safetensors$"):
        ContinuousAR.from_pretrained("me/no-carl-json")


def test_from_pretrained_on_the_hub_checks_the_plugins_first(trained, tmp_path, monkeypatch):
    import json

    folder = shutil.copytree(trained, tmp_path / "needs", ignore=shutil.ignore_patterns("checkpoints"))
    (folder / "carl.json").write_text(json.dumps({"plugins": {"audio": {"distribution": "carl-audio", "version": "1"}}}))
    serve(monkeypatch, folder)
    with pytest.raises(carl.plugins.CarlError, match=r"^this model needs the carl plugin 'audio'"):
        ContinuousAR.from_pretrained("me/needs")


def test_a_checkpoint_folder_loads_onto_the_asked_device(trained, monkeypatch):
    moved = []
    monkeypatch.setattr(ContinuousAR, "to", lambda self, device: moved.append(device) or self)
    ContinuousAR.from_pretrained(trained / "checkpoints" / "step-0000002", map_location="meta")
    assert moved == ["meta"]


# ---------------------------------------------------------------------------------------------
# tokenizer options resolved from a folder


@dataclasses.dataclass(frozen=True)
class Options:
    path: str | None = None
    width: int = 4


def test_resolved_tokenizer_options_replace_the_configs():
    config = load_recipe("tiny").model
    given = dataclasses.replace(config, tokenizer=Component("folder", Options(path="ae")))
    resolved = Options(path="ae", width=16)  # what the tokenizer read from its folder
    out = _with_resolved_tokenizer(given, SimpleNamespace(config=resolved))
    assert out.tokenizer == Component("folder", resolved) and out.order == config.order
    assert _with_resolved_tokenizer(given, SimpleNamespace(config=Options(path="ae"))) is given  # nothing new
    assert _with_resolved_tokenizer(given, SimpleNamespace(config="other")) is given  # not options of this kind
    assert _with_resolved_tokenizer(given, SimpleNamespace()) is given  # a tokenizer without a config


# ---------------------------------------------------------------------------------------------
# inputs of the causal backbone, written out by hand


@pytest.mark.parametrize("order", ["causal", "random"])
def test_causal_inputs_add_positions_and_next_queries(order):
    torch.manual_seed(0)
    model = ContinuousAR(load_recipe("tiny", [f"model.order={order}"]).model)
    bb = model.backbone
    assert (bb.query_embed is not None) == (order == "random")  # only a random order needs next-position queries
    with torch.no_grad():  # embeddings far from their (near-)zero init, so a sign slip shows
        bb.pos_embed.normal_()
        if bb.query_embed is not None:
            bb.query_embed.normal_()
    b, n, d = 3, model.tokenizer.num_tokens, model.tokenizer.token_dim
    tokens, cond = torch.randn(b, n, d), torch.randn(b, bb.buffer, bb.pos_embed.shape[-1])
    perm = torch.stack([torch.randperm(n) for _ in range(b)])
    ordered = tokens.gather(1, perm[..., None].expand(-1, -1, d))
    rows = []
    for r in range(b):  # row by row, position by position
        prefix = cond[r] + bb.pos_embed[0, : bb.buffer]
        inputs = [bb.token_proj(ordered[r, j]) + bb.pos_embed[0, bb.buffer + perm[r, j]] for j in range(n - 1)]
        if bb.query_embed is not None:
            prefix = torch.cat([prefix[:-1], prefix[-1:] + bb.query_embed[0, perm[r, 0]]])
            inputs = [x + bb.query_embed[0, perm[r, j + 1]] for j, x in enumerate(inputs)]
        rows.append(torch.cat([prefix, torch.stack(inputs)]))
    expected = bb(torch.stack(rows), causal=True)[:, bb.buffer - 1 :]
    torch.testing.assert_close(model.hidden_causal(ordered, cond, perm), expected)


# ---------------------------------------------------------------------------------------------
# reduced precision


ORDERS = [("causal", 0), ("random", 0), ("masked", 0), ("masked", 2)]  # (order, encoder depth)


def build(order: str, encoder_depth: int) -> ContinuousAR:
    torch.manual_seed(0)
    return ContinuousAR(load_recipe("tiny", [f"model.order={order}", f"model.backbone.encoder_depth={encoder_depth}"]).model)


@pytest.mark.parametrize("order, encoder_depth", ORDERS)
def test_a_bf16_model_samples_and_scores_in_every_order(order, encoder_depth):
    """Regression: float32 tokens reached a bf16 token projection in the masked orders (and in the
    causal loss), which failed with a dtype mismatch."""
    model = build(order, encoder_depth).to(torch.bfloat16)
    prompt = torch.randn(2, 3, 2) if order == "causal" else None
    out = model.generate(torch.arange(2), num_steps=4, cfg=2.0, prompt=prompt, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 8, 2) and out.dtype == torch.float32 and out.isfinite().all()
    loss = model.loss({"data": torch.randn(2, 8, 2), "condition": torch.arange(2)})
    assert loss.isfinite()


def test_mars_encoder_decoder_runs_under_autocast_with_and_without_known_index():
    """Under bf16 autocast the encoder's output is bf16 while the mask token is float32: the rows
    written back (index_put, scatter_) need one dtype."""
    model = build("masked", 2)
    tokens, cond = torch.randn(2, 8, 2), model.conditioner(torch.arange(2), 2)
    known = torch.zeros(2, 8, dtype=torch.bool)
    known[:, [1, 4, 6]] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        masked = model._hidden_encoder_decoder(tokens, cond, known)
        gathered = model._hidden_encoder_decoder(tokens, cond, known, torch.tensor([[1, 4, 6], [1, 4, 6]]))
    torch.testing.assert_close(gathered, masked)


def test_unreadable_weights_name_the_file_and_the_error(trained, tmp_path):
    from carl.errors import WeightsError

    folder = shutil.copytree(trained, tmp_path / "cut", ignore=shutil.ignore_patterns("checkpoints"))
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:100])
    with pytest.raises(WeightsError, match=f"^cannot read the weights {folder / 'model.safetensors'}: SafetensorError: "):
        ContinuousAR.from_pretrained(folder)


def test_a_config_from_json_is_checked_and_the_tokenizer_frozen():
    from carl.config import to_dict
    from carl.errors import RecipeError

    with pytest.raises(RecipeError, match=r"^unknown recipe key 'config\.typo'"):
        ContinuousAR({**to_dict(load_recipe("tiny").model), "typo": 1})
    model = ContinuousAR(to_dict(load_recipe("tiny", ["model.tokenizer={name: autoencoder}"]).model))
    params = list(model.tokenizer.parameters())
    assert params and not any(p.requires_grad for p in params)  # trained separately, never by the AR loss


def test_a_tokenizer_folder_s_architecture_is_written_into_the_config(tmp_path):
    """config.json must rebuild the model without the tokenizer folder: the options read from the
    folder replace the recipe's ``path`` shorthand."""
    from carl.config import to_dict
    from carl.tokenizers.pretrained import save_tokenizer

    base = ContinuousAR(load_recipe("tiny", ["model.tokenizer={name: autoencoder, latent_channels: 8}"]).model)
    folder = save_tokenizer(base.tokenizer, "autoencoder", tmp_path / "ae")
    model = ContinuousAR(load_recipe("tiny", [f"model.tokenizer={{name: autoencoder, path: {folder}}}"]).model)
    assert model.config.tokenizer.options == model.tokenizer.config
    assert model.config.tokenizer.options.latent_channels == 8
    assert to_dict(model.config.tokenizer) != to_dict(load_recipe("tiny", [f"model.tokenizer={{name: autoencoder, path: {folder}}}"]).model.tokenizer)
