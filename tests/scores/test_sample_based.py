"""What the sample-based rules share (:mod:`carl.scores.sample_based`): the generator's draws and
the configuration's ranges."""

import pytest

from carl.scores import CRPSScore, KernelScore, SampleScore, SampleScoreConfig


def test_sample_based_rules_share_the_generator_draws():
    assert issubclass(CRPSScore, SampleScore) and issubclass(KernelScore, SampleScore)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"num_samples": 1}, "num_samples 1 is out of range; allowed: >= 2"),
        ({"batch_mul": 0}, "batch_mul 0 is out of range; allowed: >= 1"),
        ({"depth": 0}, "depth 0 is out of range; allowed: >= 1"),
    ],
)
def test_sample_score_config_refusals(options, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        SampleScoreConfig(**options)
    SampleScoreConfig(num_samples=2, batch_mul=1, depth=1)  # the smallest valid values
