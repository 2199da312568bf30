"""Generation (:mod:`carl.model.generation`): generate's defaults and what reaches the order, the
progress bar and the scoring rule; generation sees exactly what training sees (a spy on the
sampler records the hidden states of every step); guidance points towards the condition; the KV
cache and the fixed-size gathers against the plain loops they replace."""

import pytest
import torch

import carl.progress as progress
from carl.model import ContinuousAR, generation
from carl.model.generation import static_by_default

from helpers import spy, tiny_model_config
from helpers.models import TOL, check_kv_cache_sampling, model_for, randomized
import carl
from carl.config import SampleConfig


# ---------------------------------------------------------------------------------------------
# generate: defaults, and what reaches the order, the progress bar and the scoring rule


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


def test_linear_cfg_schedule_grows_to_just_below_full_scale(monkeypatch):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked"))
    scales = []
    original = model.score.sample
    monkeypatch.setattr(model.score, "sample", lambda h, **kw: scales.append(kw["guidance"].scale) or original(h, **kw))
    model.generate(torch.tensor([0]), num_steps=4, cfg=3.0)
    schedule = model.order.schedule(8, 4)
    # MAR/EAR: the masked count after the step, held at >= 1, so the last step is 1 + 2 * 7/8
    assert scales == pytest.approx([1 + 2.0 * min(k, 7) / 8 for k in schedule]) and scales[-1] == 2.75
    scales.clear()
    model.generate(torch.tensor([0]), num_steps=4, cfg=3.0, cfg_schedule="constant")
    assert scales == [3.0] * 4


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


def test_prompted_causal_generation_continues_the_prompt():
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("causal", conditioner="none")).eval()
    prompt = torch.randn(3, 5, 2)
    out = model.generate(batch_size=3, prompt=prompt, generator=torch.Generator().manual_seed(1), return_tokens=True)
    assert out.shape == (3, 8, 2) and torch.equal(out[:, :5], prompt)
    # The first generated token is the head's draw at the teacher-forced hidden state after the prompt.
    cond = model.conditioner(None, 3)
    hidden = model.hidden_causal(out, cond, torch.arange(8).expand(3, 8))
    expected = model.score.sample(hidden[:, 5], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out[:, 5], expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="needs the causal order"):
        ContinuousAR(tiny_model_config("masked")).generate(prompt=prompt)


# ---------------------------------------------------------------------------------------------
# Generation sees exactly what training sees


def record(model, monkeypatch):
    """Spies on the generation order and on every draw: ``(order, [(hidden, uncond, drawn)])``."""
    seen = {"order": None, "draws": []}
    original_order, original_sample = model.order.generation_order, model.score.sample

    def generation_order(*args, **kwargs):
        seen["order"] = original_order(*args, **kwargs)
        return seen["order"]

    def sample(hidden, **kwargs):
        drawn = original_sample(hidden, **kwargs)
        guidance = kwargs["guidance"]
        seen["draws"].append((hidden.clone(), None if guidance is None else guidance.uncond.clone(), drawn.clone()))
        return drawn

    monkeypatch.setattr(model.order, "generation_order", generation_order)
    monkeypatch.setattr(model.score, "sample", sample)
    return seen


@pytest.mark.parametrize("order", ["causal", "random"])
@pytest.mark.parametrize("cfg", [1.0, 2.5])
@pytest.mark.parametrize("static", [False, True])
def test_causal_generation_samples_from_the_teacher_forced_hidden_states(order, cfg, static, monkeypatch):
    model, labels = model_for(order), torch.tensor([0, 3, 1])
    seen = record(model, monkeypatch)
    tokens = model.generate(labels, cfg=cfg, generator=torch.Generator().manual_seed(1), return_tokens=True,
                            static_shapes=static)
    order_, draws = seen["order"], seen["draws"]
    assert len(draws) == model.tokenizer.num_tokens  # one token per step
    ordered = torch.gather(tokens, 1, order_[..., None].expand_as(tokens))
    with torch.no_grad():
        want = model.hidden_causal(ordered, model.conditioner(labels, 3), order_)
        want_uncond = model.hidden_causal(ordered, model.conditioner(None, 3), order_)
    for i, (hidden, uncond, drawn) in enumerate(draws):
        torch.testing.assert_close(hidden, want[:, i], **TOL, msg=f"step {i}")
        torch.testing.assert_close(drawn, ordered[:, i], rtol=0, atol=0, msg=f"step {i}")
        if cfg == 1.0:
            assert uncond is None
        else:
            torch.testing.assert_close(uncond, want_uncond[:, i], **TOL, msg=f"step {i}")


@pytest.mark.parametrize("order", ["causal", "random"])
def test_kv_cache_generation_matches_teacher_forcing(order, monkeypatch):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config(order)).eval()
    seen = []
    original = model.score.sample
    monkeypatch.setattr(model.score, "sample", lambda h, **kw: seen.append(h.clone()) or original(h, **kw))
    labels = torch.tensor([1, 3])
    tokens = model.generate(labels, return_tokens=True, generator=torch.Generator().manual_seed(5))
    order_used = model.order.generation_order(2, 8, torch.Generator().manual_seed(5))
    ordered = torch.gather(tokens, 1, order_used[..., None].expand_as(tokens))
    with torch.no_grad():
        hidden = model.hidden_causal(ordered, model.conditioner(labels, 2), order_used)
    torch.testing.assert_close(torch.stack(seen, 1), hidden, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("given", [1, 3])
def test_a_prompt_is_kept_and_generation_goes_on_from_it_as_in_training(given, monkeypatch):
    model, labels = model_for("causal"), torch.tensor([2, 0])
    prompt = torch.randn(2, given, 2)
    seen = record(model, monkeypatch)
    tokens = model.generate(labels, cfg=2.0, prompt=prompt, generator=torch.Generator().manual_seed(0), return_tokens=True)
    assert torch.equal(tokens[:, :given], prompt)
    draws = seen["draws"]
    assert len(draws) == model.tokenizer.num_tokens - given  # the prompt is read, not drawn
    order = torch.arange(8).expand(2, 8)
    with torch.no_grad():
        want = model.hidden_causal(tokens, model.conditioner(labels, 2), order)
        want_uncond = model.hidden_causal(tokens, model.conditioner(None, 2), order)
    for step, (hidden, uncond, drawn) in enumerate(draws, start=given):
        torch.testing.assert_close(hidden, want[:, step], **TOL, msg=f"step {step}")
        torch.testing.assert_close(uncond, want_uncond[:, step], **TOL, msg=f"step {step}")
        assert torch.equal(drawn, tokens[:, step])


@pytest.mark.parametrize("encoder_depth", [0, 1])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_masked_generation_samples_from_the_hidden_states_of_the_boolean_mask_path(encoder_depth, cfg, monkeypatch):
    model, labels = model_for("masked", encoder_depth=encoder_depth), torch.tensor([1, 2])
    seen = record(model, monkeypatch)
    tokens = model.generate(labels, num_steps=4, cfg=cfg, generator=torch.Generator().manual_seed(2), return_tokens=True)
    order, draws = seen["order"], seen["draws"]
    schedule = model.order.schedule(8, 4)
    assert len(draws) == len(schedule)
    ranks = order.argsort(dim=1)
    known_before = 0
    for known_after, (hidden, uncond, drawn) in zip(schedule, draws, strict=True):
        known = ranks < known_before  # what was written before this step, by position
        new = ((ranks >= known_before) & (ranks < known_after))  # what this step writes
        visible = torch.where(known[..., None], tokens, torch.zeros_like(tokens))
        with torch.no_grad():
            want = model.hidden_bidirectional(visible, model.conditioner(labels, 2), known)[new]
            want_uncond = model.hidden_bidirectional(visible, model.conditioner(None, 2), known)[new]
        torch.testing.assert_close(hidden, want, **TOL, msg=f"{known_after} known")
        torch.testing.assert_close(drawn, tokens[new], rtol=0, atol=0)
        if cfg != 1.0:
            torch.testing.assert_close(uncond, want_uncond, **TOL)
        known_before = known_after


def test_masked_generation_writes_every_position_once(monkeypatch):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked")).eval()
    counts = []
    original = model.score.sample
    monkeypatch.setattr(model.score, "sample", lambda h, **kw: counts.append(h.shape[0]) or original(h, **kw))
    model.generate(torch.tensor([0, 1, 2]), num_steps=5, cfg=2.0, generator=torch.Generator().manual_seed(0))
    assert sum(counts) == 3 * 8 and len(counts) == 5


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance points towards the condition


def spy_on_sampler(model, monkeypatch) -> list[tuple[torch.Tensor, object]]:
    calls = []
    original = model.score.sample

    def spy(hidden, **kw):
        calls.append((hidden.clone(), kw["guidance"]))
        return original(hidden, **kw)

    monkeypatch.setattr(model.score, "sample", spy)
    return calls


def test_sample_gives_the_first_half_as_condition_and_the_second_as_unconditional(monkeypatch):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked"))
    calls = spy_on_sampler(model, monkeypatch)
    cond, uncond = torch.randn(3, 16), torch.randn(3, 16)
    generation.sample_step(model, torch.cat([cond, uncond]), 4, cfg=3.0, cfg_schedule="constant", temperature=1.0, generator=None)
    (hidden, guidance), = calls
    assert torch.equal(hidden, cond) and torch.equal(guidance.uncond, uncond) and guidance.scale == 3.0
    calls.clear()
    generation.sample_step(model, cond, 4, cfg=1.0, cfg_schedule="constant", temperature=1.0, generator=None)
    assert torch.equal(calls[0][0], cond) and calls[0][1] is None  # no guidance: all rows are conditional


def test_causal_generation_guides_with_the_labels_against_the_null_class(monkeypatch):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("causal")).eval()
    calls = spy_on_sampler(model, monkeypatch)
    labels = torch.tensor([1, 3])
    model.generate(labels, cfg=2.0, generator=torch.Generator().manual_seed(0))
    order, tokens = torch.arange(8).expand(2, 8), torch.zeros(2, 8, 2)
    with torch.no_grad():  # the first token's hidden state depends on the condition alone
        want_cond = model.hidden_causal(tokens, model.conditioner(labels, 2), order)[:, 0]
        want_uncond = model.hidden_causal(tokens, model.conditioner(None, 2), order)[:, 0]
    hidden, guidance = calls[0]
    torch.testing.assert_close(hidden, want_cond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guidance.uncond, want_uncond, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(want_cond, want_uncond, atol=1e-3)  # guard: the two halves differ


@pytest.mark.parametrize("encoder_depth", [0, 1])
def test_masked_generation_guides_with_the_labels_against_the_null_class(monkeypatch, encoder_depth):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked", encoder_depth=encoder_depth)).eval()
    calls = spy_on_sampler(model, monkeypatch)
    label = torch.tensor([2])
    model.generate(label, num_steps=8, cfg=2.0, generator=torch.Generator().manual_seed(0))  # one token per step
    tokens, unknown = torch.zeros(1, 8, 2), torch.zeros(1, 8, dtype=torch.bool)
    with torch.no_grad():  # first step: nothing known, every position's hidden state depends on the condition
        want_cond = model.hidden_bidirectional(tokens, model.conditioner(label, 1), unknown)[0]  # (N, C)
        want_uncond = model.hidden_bidirectional(tokens, model.conditioner(None, 1), unknown)[0]
    hidden, guidance = calls[0]
    position = (want_cond - hidden).abs().sum(-1).argmin()  # the position the order wrote first
    torch.testing.assert_close(hidden[0], want_cond[position], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guidance.uncond[0], want_uncond[position], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(want_cond[position], want_uncond[position], atol=1e-3)


# ---------------------------------------------------------------------------------------------
# The fast paths against the plain loops they replace


@pytest.mark.parametrize("encoder_depth", [0, 1])
def test_masked_generation_matches_the_boolean_indexing_loop(encoder_depth):
    torch.manual_seed(0)
    model = randomized(ContinuousAR(tiny_model_config("masked", encoder_depth=encoder_depth))).eval()
    labels = torch.tensor([0, 3, 1])
    kwargs = dict(num_steps=4, cfg=2.0, temperature=0.8, return_tokens=True)
    fast = model.generate(labels, generator=torch.Generator().manual_seed(5), **kwargs)
    plain = boolean_mask_generation(model, labels, torch.Generator().manual_seed(5), **kwargs)
    assert fast.abs().mean() > 0.1  # real tokens, not the untrained head's zeros
    torch.testing.assert_close(fast, plain, rtol=0, atol=0)


def boolean_mask_generation(model, labels, generator, *, num_steps, cfg, temperature, return_tokens):
    """The masked-order sampler as it was before fixed-size gathers (boolean masks each step)."""
    batch, n, d = len(labels), model.tokenizer.num_tokens, model.tokenizer.token_dim
    cond = torch.cat([model.conditioner(labels, batch), model.conditioner(None, batch)])
    order = model.order.generation_order(batch, n, generator)
    ranks = order.argsort(dim=-1)
    tokens = torch.zeros(batch, n, d)
    known_before = 0
    for known_after in model.order.schedule(n, num_steps):
        known = ranks < known_before
        hidden = model.hidden_bidirectional(tokens.repeat(2, 1, 1), cond, known.repeat(2, 1))
        new = (ranks >= known_before) & (ranks < known_after)
        tokens[new] = generation.sample_step(model, hidden[new.repeat(2, 1)], known_after, cfg=cfg, cfg_schedule="linear",
                                    temperature=temperature, generator=generator)
        known_before = known_after
    return tokens


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("order", ["causal", "random"])
def test_kv_cache_sampling_equals_cache_free_sampling(order, static):
    check_kv_cache_sampling(order, torch.device("cpu"), static_shapes=static)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    return carl.train("tiny", ["train.max_steps=2", "train.tracker=none", "sample.num_steps=5", "sample.cfg=2.5",
                               "sample.temperature=0.6", "sample.cfg_schedule=constant"],
                      output=tmp_path_factory.mktemp("tiny"), progress=False)


def spy_sampler(model, monkeypatch):
    calls = []
    original = model.score.sample

    def sample(hidden, **kw):
        calls.append(kw)
        return original(hidden, **kw)

    monkeypatch.setattr(model.score, "sample", sample)
    return calls


def test_a_loaded_model_samples_with_its_recipe_s_settings(shipped, monkeypatch):
    model = ContinuousAR.from_pretrained(shipped)
    assert model.sample_config == SampleConfig(num_steps=5, cfg=2.5, temperature=0.6, cfg_schedule="constant",
                                               rows=4, per_row=4)
    calls = spy_sampler(model, monkeypatch)
    model.generate(torch.arange(2))
    assert {(kw["temperature"], kw["guidance"].scale) for kw in calls} == {(0.6, 2.5)}  # constant CFG 2.5
    calls.clear()
    model.generate(torch.arange(2), cfg=1.0, temperature=1.0)  # what the caller gives wins
    assert {(kw["temperature"], kw["guidance"]) for kw in calls} == {(1.0, None)}


def test_a_checkpoint_folder_samples_with_its_recipe_s_settings(shipped):
    step = next((shipped / "checkpoints").iterdir())
    assert ContinuousAR.from_pretrained(step).sample_config.cfg == 2.5


def test_a_model_saved_without_a_recipe_samples_with_carl_s_defaults(shipped, tmp_path):
    model = ContinuousAR.from_pretrained(shipped)
    model.save_pretrained(tmp_path / "bare")
    assert ContinuousAR.from_pretrained(tmp_path / "bare").sample_config == SampleConfig()
    assert ContinuousAR(model.config).sample_config == SampleConfig()


def test_the_hub_path_reads_the_recipe_too(shipped, tmp_path, monkeypatch):
    """A Hub repo id: the recipe is downloaded beside the weights (here from a local Hub cache)."""
    import shutil

    import huggingface_hub.constants as constants

    snapshot = tmp_path / "models--me--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(shipped, snapshot, ignore=shutil.ignore_patterns("checkpoints", "samples", "logs", ".carl"))
    (tmp_path / "models--me--tiny" / "refs").mkdir()
    (tmp_path / "models--me--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert ContinuousAR.from_pretrained("me/tiny").sample_config.temperature == 0.6
