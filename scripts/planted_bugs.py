"""Realistic bugs planted by hand, for ``python scripts/mutation.py --planted``.

mutmut's syntactic mutants (an operator, a constant, a string) are easy to kill; the bugs people
write are often semantic: a sign in an objective, a spread that is a variance, an order reversed,
statistics paired with the wrong window, a check dropped, arguments swapped. Each case below is
one such bug as a small patch (``old`` -> ``new``, ``old`` found exactly once in ``file``), run
against the tests of its module. A case whose ``old`` text is gone is an error, not a pass, so a
refactoring cannot retire a case silently: update it with the code.

``module`` is the row of the README's mutation table the case counts for (a module of
``scripts/mutation.py`` or, for code it does not mutate, the room it lives in).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Planted:
    name: str
    module: str
    file: str  # relative to the repository root
    old: str
    new: str
    why: str  # what a user would see
    tests: tuple[str, ...] = ()  # pytest arguments; default: those of ``module`` in scripts/mutation.py


# The tests of the rooms that scripts/mutation.py does not mutate (the others use its modules' tests).
CHECKPOINTS = ("tests/training/test_checkpoints.py", "tests/training/test_resume.py")
TOKENIZERS = ("tests/training/test_jobs.py", "tests/tokenizers")
TIMESERIES = ("plugins/timeseries/tests",)

PLANTED: tuple[Planted, ...] = (
    # -- scoring rules ----------------------------------------------------------------------------
    Planted("energy-temperature-ignored", "scores", "carl/scores/energy.py",
            "return to_target - 0.5 * temperature * diversity",
            "return to_target - 0.5 * diversity",
            "a train temperature other than 1 trains the plain energy score"),
    Planted("energy-plain-estimator", "scores", "carl/scores/sample_based.py",
            "torch.triu_indices(m, m, offset=1, device=device)",
            "torch.triu_indices(m, m, offset=0, device=device)",
            "the pairs include i == j: the biased M^2 estimator, and NaN gradients of |0|^alpha"),
    Planted("crps-mean-over-dims", "scores", "carl/scores/crps.py",
            "return (to_target - 0.5 * temperature * diversity).sum(-1)",
            "return (to_target - 0.5 * temperature * diversity).mean(-1)",
            "the CRPS of D-dimensional tokens is divided by D"),
    Planted("gaussian-temperature-on-variance", "scores", "carl/scores/log_score.py",
            "self.config.sample_sigma)\n        return mean + temperature * std",
            "self.config.sample_sigma)\n        return mean + temperature**0.5 * std",
            "the temperature scales the variance, not the standard deviation"),
    Planted("guidance-mix-swapped", "scores", "carl/scores/base.py",
            "return self.scale * cond + (1.0 - self.scale) * self.uncond",
            "return self.scale * self.uncond + (1.0 - self.scale) * cond",
            "classifier-free guidance pushes away from the condition"),
    Planted("guidance-schedule-arguments-swapped", "model", "carl/model/generation.py",
            "guidance_scale(cfg, cfg_schedule, known_after, model.tokenizer.num_tokens)",
            "guidance_scale(cfg, cfg_schedule, model.tokenizer.num_tokens, known_after)",
            "the linear guidance schedule is read backwards"),
    # -- orders -----------------------------------------------------------------------------------
    Planted("masked-known-off-by-one", "orders", "carl/orders/masked.py",
            "known = ranks < (seq_len - num_masked)",
            "known = ranks <= (seq_len - num_masked)",
            "one more token is visible than the plan says, and it is also a target"),
    Planted("masked-schedule-leaves-nothing", "orders", "carl/orders/masked.py",
            "masked = max(1, min(unknown - 1, masked))",
            "masked = max(1, min(unknown, masked))",
            "a step of the masked schedule may write no token"),
    # -- backbone and model -----------------------------------------------------------------------
    Planted("kv-cache-mask-off-by-one", "backbone", "carl/model/backbone.py",
            "return torch.ones(queries, self.length + queries, dtype=torch.bool, device=device).tril(self.length), False",
            "return torch.ones(queries, self.length + queries, dtype=torch.bool, device=device).tril(self.length + 1), False",
            "a prompt's tokens see the token after them"),
    Planted("causal-next-position-stale", "model", "carl/model/generation.py",
            "x = model.causal_inputs(token, order_rows[:, i : i + 1], order_rows[:, i + 1 : i + 2])",
            "x = model.causal_inputs(token, order_rows[:, i : i + 1], order_rows[:, i : i + 1])",
            "a random-order model is asked for the position it just wrote"),
    Planted("bidirectional-known-off-by-one", "model", "carl/model/generation.py",
            "known = (ranks < known_before).repeat(rows, 1)",
            "known = (ranks <= known_before).repeat(rows, 1)",
            "a masked-order step sees one not-yet-written (zero) token as known"),
    Planted("generate-ignores-shipped-temperature", "model", "carl/model/ar.py",
            "d.temperature if temperature is None else temperature",
            "1.0 if temperature is None else temperature",
            "Python's generate() samples at temperature 1, not the recipe's"),
    # -- model folders, loading, weights ----------------------------------------------------------
    Planted("checkpoint-loads-raw-weights", "folder", "carl/model/folder.py",
            "load_safetensors(model, str(folder / EMA_FILE), strict=True)",
            "load_safetensors(model, str(folder / WEIGHTS_FILE), strict=True)",
            "a checkpoint is sampled with the raw weights instead of the EMA",
            tests=("tests/model/test_folder.py", "tests/model/test_loading.py", "tests/cli/test_sample.py")),
    Planted("remote-path-looked-up-on-hub", "remote", "carl/remote.py",
            "or reference.count(\"/\") > 1",
            "or reference.count(\"/\") > 2",
            "a missing local folder a/b/c is looked up on the Hub instead of refused",
            tests=("tests/test_remote.py", "tests/model/test_loading.py")),
    Planted("nonfinite-buffers-unchecked", "weights", "carl/weights.py",
            "for name, tensor in module.state_dict().items():",
            "for name, tensor in module.named_parameters():",
            "a NaN in a buffer (a normalisation statistic) is not found before sampling or saving",
            tests=("tests/test_weights.py", "tests/model/test_folder.py")),
    # -- configuration ----------------------------------------------------------------------------
    Planted("override-given-twice-kept", "config", "carl/config.py",
            "        if key in seen:\n",
            "        if key in seen and False:\n",
            "a repeated override silently keeps the last value",
            tests=("tests/test_config.py",)),
    Planted("range-check-dropped-in-optional", "config", "carl/ranges.py",
            "elif origin in (typing.Union, types.UnionType) and value is not None:",
            "elif origin is types.UnionType and value is not None:",
            "a range on an `Annotated[...] | None` field is not checked",
            tests=("tests/test_ranges.py", "tests/test_config.py")),
    Planted("range-check-dropped-in-tuple", "config", "carl/ranges.py",
            "elif origin is tuple and isinstance(value, tuple):",
            "elif origin is tuple and isinstance(value, list):",
            "ranges inside tuple fields of a config built in Python",
            tests=("tests/test_ranges.py", "tests/test_config.py")),
    # -- training ---------------------------------------------------------------------------------
    Planted("warmup-keywords-swapped", "train", "carl/training/trainer.py",
            "lr_factor(step, warmup=warmup, total=self.total_steps,",
            "lr_factor(step, warmup=self.total_steps, total=warmup,",
            "the learning rate warms up over the whole run"),
    Planted("warmup-off-by-one", "train", "carl/training/schedule.py",
            "return (step + 1) / warmup",
            "return step / warmup",
            "the first step has learning rate 0"),
    Planted("interrupt-after-older-checkpoint", "train", "carl/training/trainer.py",
            "if last is None or checkpoints.checkpoint_step(last) != self.step:",
            "if last is None:",
            "an interrupt after an older checkpoint exists loses the steps since"),
    Planted("prune-order-reversed", "training", "carl/training/checkpoints.py",
            "doomed = older[: max(0, len(older) - (keep - 1))]",
            "doomed = older[::-1][: max(0, len(older) - (keep - 1))]",
            "pruning keeps the oldest checkpoints",
            tests=CHECKPOINTS),
    Planted("latest-checkpoint-is-oldest", "training", "carl/training/checkpoints.py",
            "return found[-1] if found else None",
            "return found[0] if found else None",
            "--resume continues from the oldest checkpoint",
            tests=CHECKPOINTS),
    Planted("nonfinite-check-grads-ignored", "training", "carl/training/nonfinite.py",
            "if grad_norm is not None and self.check_grads:",
            "if grad_norm is not None:",
            "fp16 overflow steps are counted as non-finite and stop the run",
            tests=("tests/training/test_nonfinite.py",)),
    Planted("lock-of-another-host-taken", "training", "carl/training/run_folder.py",
            "if not isinstance(pid, int) or holder.get(\"host\") != socket.gethostname():",
            "if not isinstance(pid, int):",
            "a run on another host loses its folder to this one",
            tests=("tests/training/test_run_folder.py",)),
    Planted("lock-released-for-anyone", "training", "carl/training/run_folder.py",
            "if holder is not None and holder.get(\"pid\") == os.getpid() and holder.get(\"host\") == socket.gethostname():",
            "if holder is not None:",
            "a run ending removes another run's lock",
            tests=("tests/training/test_run_folder.py",)),
    # -- tokenizers and their job -----------------------------------------------------------------
    Planted("kl-sign", "tokenizers", "carl/training/jobs/tokenizer.py",
            "mean**2 + log_var.exp() - 1.0 - log_var",
            "mean**2 + log_var.exp() - 1.0 + log_var",
            "the KL term rewards a collapsing posterior",
            tests=TOKENIZERS),
    Planted("reparameterisation-variance", "tokenizers", "carl/training/jobs/tokenizer.py",
            "z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)",
            "z = mean + torch.exp(log_var) * torch.randn_like(mean)",
            "the training noise has the variance as its spread",
            tests=TOKENIZERS),
    Planted("posterior-sample-variance", "tokenizers", "carl/tokenizers/autoencoder.py",
            "mean = mean + torch.exp(0.5 * log_var) * noise.to(mean.device)",
            "mean = mean + torch.exp(log_var) * noise.to(mean.device)",
            "cached tokens are drawn with the variance as their spread",
            tests=TOKENIZERS),
    Planted("overall-std-ignores-channel-means", "tokenizers", "carl/tokenizers/statistics.py",
            "return float((second - self.mean.mean() ** 2).clamp_min(0).sqrt())",
            "return float((second - (self.mean**2).mean()).clamp_min(0).sqrt())",
            "latent normalisation ignores the spread between channel means",
            tests=TOKENIZERS),
    # -- image plugin -----------------------------------------------------------------------------
    Planted("convert-heads-contradiction-dropped", "convert", "carl_image_ear/convert.py",
            "if official_width == width and heads != official_heads:",
            "if False:",
            "--heads that contradicts the checkpoint gives a wrong model",
            tests=("plugins/image_ear/tests/test_convert.py",)),
    Planted("kl16-scale-not-undone", "kl16", "carl_image_ear/kl16.py",
            "latent = rearrange(tokens.float() / self.config.scale,",
            "latent = rearrange(tokens.float() * self.config.scale,",
            "decoding multiplies by the latent scale again",
            tests=("plugins/image_ear/tests/test_kl16.py",)),
    # -- time-series plugin -----------------------------------------------------------------------
    Planted("forecast-window-statistics-swapped", "timeseries", "carl_timeseries/forecast.py",
            "mean.repeat(num_samples, 1, 1), std.repeat(num_samples, 1, 1)",
            "mean.repeat_interleave(num_samples, 0), std.repeat_interleave(num_samples, 0)",
            "with several windows, paths are denormalised with another window's statistics",
            tests=TIMESERIES),
    Planted("energy-score-scale-ignored", "timeseries", "carl_timeseries/forecast.py",
            "energy_score((samples / scale).flatten(2), (truth / scale).flatten(1), alpha=1.0)",
            "energy_score(samples.flatten(2), truth.flatten(1), alpha=1.0)",
            "the channel with the largest units dominates the energy score",
            tests=TIMESERIES),
    Planted("latest-origin-off-by-one", "timeseries", "carl_timeseries/history.py",
            "if when > next_date:",
            "if when >= next_date:",
            "the step after the last date is refused as an origin",
            tests=TIMESERIES),
    Planted("default-origin-off-by-one", "timeseries", "carl_timeseries/history.py",
            "        index = len(dates)\n",
            "        index = len(dates) - 1\n",
            "the default forecast starts at the last observed date",
            tests=TIMESERIES),
    Planted("partly-observed-step-known", "timeseries", "carl_timeseries/history.py",
            "known = int(np.argmax(np.isnan(truth).any(1)))",
            "known = int(np.argmax(np.isnan(truth).all(1)))",
            "a horizon step observed in only some channels is scored",
            tests=TIMESERIES),
)
