"""The model (:mod:`carl.model.ar`): every scoring rule and order trains and samples in it, the loss
sees targets only, the hidden states of the bidirectional and causal paths written out by hand,
what training hands the conditioner, reduced precision, and configs read from JSON or a tokenizer
folder."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from carl.config import Component, load_recipe
from carl.model import ContinuousAR
from carl.model.ar import _with_resolved_tokenizer
from carl.orders.base import Plan
from carl.plugins import registry

from helpers import spy, tiny_model_config
from helpers.models import TOL, model_for


def batch(b=4):
    g = torch.Generator().manual_seed(0)
    return {"data": torch.randn(b, 8, 2, generator=g), "condition": torch.arange(b) % 4}


@pytest.mark.parametrize("score", sorted(registry("scores").names()))
def test_every_scoring_rule_trains_and_samples_in_the_model(score):
    torch.manual_seed(0)
    config = tiny_model_config("masked")
    config = dataclasses.replace(config, score=Component(score, registry("scores").get(score).Config()))
    model = ContinuousAR(config)
    loss = model.loss(batch())
    assert torch.isfinite(loss)
    loss.backward()
    out = model.generate(torch.arange(3), num_steps=4, cfg=2.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 8, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("order", registry("orders").names())
@pytest.mark.parametrize("conditioner", ["class", "none"])
def test_loss_and_generate_for_every_order(order, conditioner):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config(order, conditioner=conditioner))
    for p in model.score.parameters():  # the generator's output starts at zero, which blocks gradients upstream
        torch.nn.init.normal_(p, std=0.2)
    loss = model(batch())
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.backbone.token_proj.weight.grad.abs().sum() > 0
    condition = torch.tensor([0, 3]) if conditioner == "class" else None
    cfg = 2.0 if conditioner == "class" else 1.0
    out = model.generate(condition, batch_size=2, num_steps=4, cfg=cfg, generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 8, 2) and torch.isfinite(out).all()
    again = model.generate(condition, batch_size=2, num_steps=4, cfg=cfg, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, again)
    assert model.training  # generate restores the mode


def test_loss_is_computed_on_targets_only(monkeypatch):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked"))
    plan = model.order.plan(4, 8, torch.Generator().manual_seed(3))
    shapes = []
    original = model.score.loss
    monkeypatch.setattr(model.score, "loss", lambda h, t: shapes.append(h.shape) or original(h, t))
    model.loss(batch(), plan)
    assert shapes == [(int(plan.targets.sum()), 16)]


# ---------------------------------------------------------------------------------------------
# Training: what the conditioner is handed


def test_label_dropout_uses_unconditional_embedding():
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked"))
    labels = torch.tensor([0, 1])
    dropped = model.conditioner(labels, 2, drop=torch.tensor([True, False]))
    torch.testing.assert_close(dropped[0], model.conditioner(None, 1)[0])
    torch.testing.assert_close(dropped[1], model.conditioner(labels, 2)[1])
    with pytest.raises(ValueError, match="class labels must lie in"):
        model.conditioner(torch.tensor([4]), 1)


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
# Hidden states: the bidirectional path


def test_known_tokens_change_hidden_states_but_targets_do_not():
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked")).eval()
    tokens = torch.randn(1, 8, 2)
    known = torch.tensor([[True, True, False, False, True, False, False, False]])
    cond = model.conditioner(torch.tensor([1]), 1)
    base = model.hidden_bidirectional(tokens, cond, known)
    changed_target = tokens.clone()
    changed_target[0, 2] += 5
    torch.testing.assert_close(model.hidden_bidirectional(changed_target, cond, known), base)
    changed_known = tokens.clone()
    changed_known[0, 0] += 5
    assert not torch.allclose(model.hidden_bidirectional(changed_known, cond, known), base)


@pytest.mark.parametrize("encoder_depth", [0, 1])
def test_gathered_targets_equal_boolean_indexing(encoder_depth):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config("masked", encoder_depth=encoder_depth)).eval()
    tokens, labels = torch.randn(3, 8, 2), torch.tensor([0, 1, 2])
    assert model.order.plan(3, 8).num_known is not None  # the masked order states its count
    order = torch.rand(3, 8, generator=torch.Generator().manual_seed(1)).argsort(1)
    plan = Plan(order, order.argsort(1) < 3, num_known=3)
    cond = model.conditioner(labels, 3)
    fast = model.hidden_at_targets(tokens, cond, plan)
    plain = model.hidden_at_targets(tokens, cond, Plan(plan.order, plan.known))  # no num_known: boolean masks
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("encoder_depth", [0, 1])
def test_training_gathers_the_same_targets_as_the_boolean_mask(encoder_depth):
    model = model_for("masked", encoder_depth=encoder_depth)
    tokens, cond = torch.randn(3, 8, 2), model.conditioner(torch.tensor([0, 1, 2]), 3)
    plan = model.order.plan(3, 8, torch.Generator().manual_seed(0))
    assert plan.num_known is not None and 0 < plan.num_known < 8
    with torch.no_grad():
        hidden, targets = model.hidden_at_targets(tokens, cond, plan)
        by_mask, mask_targets = model.hidden_at_targets(tokens, cond, Plan(plan.order, plan.known))  # num_known unset
        reference = model.hidden_bidirectional(tokens, cond, plan.known)[plan.targets]
    torch.testing.assert_close(hidden, reference, **TOL)
    torch.testing.assert_close(by_mask, reference, **TOL)
    assert torch.equal(targets, tokens[plan.targets]) and torch.equal(mask_targets, targets)


# ---------------------------------------------------------------------------------------------
# Hidden states: the causal path, its inputs written out by hand


@pytest.mark.parametrize("order", ["causal", "random"])
def test_causal_attention_never_sees_later_tokens(order):
    torch.manual_seed(0)
    model = ContinuousAR(tiny_model_config(order)).eval()
    g = torch.Generator().manual_seed(0)
    plan = model.order.plan(2, 8, g)
    ordered = torch.randn(2, 8, 2, requires_grad=True)
    cond = model.conditioner(torch.tensor([0, 1]), 2)
    hidden = model.hidden_causal(ordered, cond, plan.order)  # (B, N, C)
    probe = torch.randn(hidden.shape[-1])  # a plain sum of a LayerNorm output would be constant
    for i in range(8):
        (grad,) = torch.autograd.grad((hidden[:, i] @ probe).sum(), ordered, retain_graph=True)
        assert grad[:, i:].abs().max() == 0, f"step {i} sees a token at or after itself"
        if i > 0:
            assert grad[:, :i].abs().sum() > 0


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
# Reduced precision


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


# ---------------------------------------------------------------------------------------------
# The config: checked when read from JSON, tokenizer options resolved from a folder


def test_a_config_from_json_is_checked_and_the_tokenizer_frozen():
    from carl.config import to_dict
    from carl.errors import RecipeError

    with pytest.raises(RecipeError, match=r"^unknown recipe key 'config\.typo'"):
        ContinuousAR({**to_dict(load_recipe("tiny").model), "typo": 1})
    model = ContinuousAR(to_dict(load_recipe("tiny", ["model.tokenizer={name: autoencoder}"]).model))
    params = list(model.tokenizer.parameters())
    assert params and not any(p.requires_grad for p in params)  # trained separately, never by the AR loss


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
