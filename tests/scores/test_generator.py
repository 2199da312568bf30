"""The sample-based rules' generator (:mod:`carl.scores.generator`): EAR's SimpleMLPAdaLN recomputed
from its parameter names, token-wise over leading dimensions, and its noise drawn from the
generator's stream whatever the device."""

import pytest
import torch

from carl.scores.log_score import standard_normal

from helpers.scores import adaln_body_reference, final_layer_reference, linear, params_under, randomize, res_block_reference


def test_res_block_and_final_layer_are_ears():
    from carl.scores.generator import FinalLayer, ResBlock

    g = torch.Generator().manual_seed(1)
    x = 1e-3 * torch.randn(5, 8, generator=g)  # a spread of ~1e-3: LayerNorm's eps (1e-6 in EAR) shows
    y = torch.randn(5, 8, generator=g)
    block = randomize(ResBlock(8))
    with torch.no_grad():
        for shift_scale in (1.0, 0.4):
            torch.testing.assert_close(block(x, y, shift_scale), res_block_reference(params_under(block), x, y, shift_scale))
        final = randomize(FinalLayer(8, 3))
        torch.testing.assert_close(final(x, y), final_layer_reference(params_under(final), x, y))


def test_generator_is_ears_simple_mlp_adaln():
    from carl.scores.generator import MLPGenerator

    net = randomize(MLPGenerator(hidden_dim=4, width=8, depth=2, token_dim=3, noise_dim=5))
    g = torch.Generator().manual_seed(2)
    hidden, noise = torch.randn(3, 4, generator=g), torch.rand(6, 5, generator=g) - 0.5  # two draws per hidden state
    p = params_under(net)
    x = linear(p, "input_proj", hidden).repeat(2, 1)  # row k T + t draws from hidden[t]
    y = linear(p, "noise_embed", noise)
    with torch.no_grad():
        torch.testing.assert_close(net(hidden, noise), adaln_body_reference(p, x, y, depth=2))  # default: no temperature
        torch.testing.assert_close(net(hidden, noise, 0.3), adaln_body_reference(p, x, y, depth=2, shift_scale=0.3))


def test_generator_refuses_noise_rows_that_do_not_split_over_the_hidden_states():
    from carl.scores.generator import MLPGenerator

    net = MLPGenerator(hidden_dim=4, width=8, depth=1, token_dim=3, noise_dim=5)
    with pytest.raises(ValueError, match=r"^7 noise rows are not a multiple of 3 hidden states$"):
        net(torch.randn(3, 4), torch.randn(7, 5))


def test_adaln_modules_work_token_wise_over_leading_dimensions():
    from carl.scores.diffusion import MLPDenoiser
    from carl.scores.generator import FinalLayer, ResBlock

    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(2, 3, 8, generator=g), torch.randn(2, 3, 8, generator=g)
    flat = (x.reshape(6, 8), y.reshape(6, 8))
    with torch.no_grad():
        block, final = randomize(ResBlock(8)), randomize(FinalLayer(8, 4))
        torch.testing.assert_close(block(x, y, 1.0), block(*flat, 1.0).reshape(2, 3, 8))
        torch.testing.assert_close(final(x, y), final(*flat).reshape(2, 3, 4))
        net = randomize(MLPDenoiser(hidden_dim=4, width=8, depth=1, token_dim=2))
        tokens = torch.randn(2, 3, 2, generator=g)
        for batched, rows in zip(net(tokens, y), net(tokens.reshape(6, 2), flat[1])):
            torch.testing.assert_close(batched, rows.reshape(2, 3, 2))


# ---------------------------------------------------------------------------------------------
# Noise: drawn from the generator's stream, placed where the data lives


def test_generator_noise_follows_the_like_tensor_not_the_generator():
    """A CPU generator may seed a model on another device: the noise goes where ``like`` lives."""
    from carl.scores.generator import draw_noise

    like = torch.empty(0, device="meta", dtype=torch.float16)
    noise = draw_noise(5, 3, "uniform", like, torch.Generator().manual_seed(0))
    assert noise.device.type == "meta" and noise.dtype == torch.float16 and noise.shape == (5, 3)


@pytest.mark.parametrize("kind", ["uniform", "gaussian", "standard_normal"])
def test_noise_is_drawn_from_the_generator_on_its_device(kind):
    """A CPU generator seeds a model on another device: the noise is drawn on the CPU from its stream
    (the same seed gives the same noise on every device) and then moved where ``like`` lives."""
    from carl.scores.generator import draw_noise

    def draw(like, generator):
        if kind == "standard_normal":
            return standard_normal((5, 3), like, generator)
        return draw_noise(5, 3, kind, like, generator)

    def reference(generator):
        return torch.rand(5, 3, generator=generator) - 0.5 if kind == "uniform" else torch.randn(5, 3, generator=generator)

    cpu = draw(torch.empty(0), torch.Generator().manual_seed(19))
    torch.testing.assert_close(cpu, reference(torch.Generator().manual_seed(19)), rtol=0, atol=0)
    g, twin = torch.Generator().manual_seed(19), torch.Generator().manual_seed(19)
    elsewhere = draw(torch.empty(0, device="meta"), g)
    reference(twin)
    assert elsewhere.device.type == "meta" and elsewhere.shape == (5, 3)
    assert torch.equal(g.get_state(), twin.get_state())  # drawn from the CPU stream, not on the other device
