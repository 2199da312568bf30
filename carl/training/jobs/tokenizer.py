"""The tokenizer job: an autoencoder tokenizer learns ``encode``/``decode`` by reconstruction
plus a KL term; its latent normalisation is computed from data at the end; the output folder
becomes a tokenizer folder (:mod:`carl.tokenizers.pretrained`) that AR recipes reference."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from carl.config import ReconstructionConfig, TokenizerRecipeConfig, dump_recipe
from carl.data import DataSource
from carl.errors import CarlError
from carl.layout import RECONSTRUCTIONS_FILE
from carl.model.samples import tile
from carl.tokenizers.base import Tokenizer
from carl.tokenizers.normalize import normalize
from carl.tokenizers.pretrained import reconstruct, save_tokenizer
from carl.training.checks import check_data_fits
from carl.training.jobs.base import Job


def reconstruction_error(out: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample mean reconstruction error of the decoder's pre-activation output ``out``:
    ``mse``, ``l1`` (of the activated output) or ``bce`` (on logits, data in [0, 1])."""
    if kind == "bce":
        err = F.binary_cross_entropy_with_logits(out, x, reduction="none")
    elif kind == "l1":
        err = (out - x).abs()
    else:
        err = (out - x) ** 2
    return err.flatten(1).mean(1)


def kl_divergence(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(N(mean, exp(log_var)) || N(0, 1)), averaged over latent values."""
    return (0.5 * (mean**2 + log_var.exp() - 1.0 - log_var)).flatten(1).mean(1)


class AutoencoderObjective(nn.Module):
    """``forward(batch)``: reconstruction error of a posterior draw + ``kl_weight`` x KL, batch mean."""

    def __init__(self, tokenizer: Tokenizer, loss: ReconstructionConfig):
        super().__init__()
        self.tokenizer = tokenizer
        self.loss = loss

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample reconstruction error and KL, and the decoded (activated) output."""
        mean, log_var = self.tokenizer.posterior(x)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean) if self.training else mean
        out = self.tokenizer.decode_latents(z)
        activated = self.tokenizer.activate(out)
        error = reconstruction_error(out if self.loss.reconstruction == "bce" else activated, x.float(), self.loss.reconstruction)
        return error, kl_divergence(mean, log_var), activated

    def forward(self, batch: dict) -> torch.Tensor:
        error, kl, _ = self.terms(batch["data"])
        return (error + self.loss.kl_weight * kl).mean()


class TokenizerJob(Job):
    """Trains the recipe's ``tokenizer``; held-out MSE, PSNR and KL at every evaluation."""

    kind = "tokenizer"
    picture = RECONSTRUCTIONS_FILE
    cfg: TokenizerRecipeConfig

    def __init__(self, cfg: TokenizerRecipeConfig):
        super().__init__(cfg)
        self.source = cfg.data.build("datasets")
        self._heldout = None

    def build(self, source: DataSource, dataset, resume: bool) -> AutoencoderObjective:
        tokenizer = self.cfg.tokenizer.build("tokenizers")
        if not getattr(tokenizer, "trainable", False):
            raise CarlError(f"tokenizer '{self.cfg.tokenizer.name}' cannot be trained by carl "
                            "(a trainable tokenizer has posterior, decode_latents and activate)")
        check_data_fits(source, dataset, tokenizer, data=self.cfg.data.name, tokenizer_name=self.cfg.tokenizer.name)
        if self.cfg.loss.reconstruction == "bce" and tokenizer.config.output != "sigmoid":
            raise CarlError("loss.reconstruction bce needs the tokenizer's output: sigmoid (data in [0, 1])")
        if not resume and getattr(tokenizer.config, "path", None) is not None:
            tokenizer.prepare()  # fine-tune from a tokenizer folder
        return AutoencoderObjective(tokenizer.requires_grad_(True).train(), self.cfg.loss)

    def heldout(self) -> torch.Tensor:
        """The first ``eval.samples`` items of the held-out split (``eval.split``)."""
        if self._heldout is None:
            data = self.source.dataset(self.cfg.eval.split)
            self._heldout = data[: min(self.cfg.eval.samples, len(data))]["data"]
        return self._heldout

    @torch.no_grad()
    def evaluate(self, module: AutoencoderObjective) -> dict[str, float]:
        module.eval()
        x = self.heldout()
        device = next(module.parameters()).device
        errors, kls, sq, peak = [], [], [], 0.0
        for chunk in x.split(256):
            chunk = chunk.to(device).float()
            error, kl, activated = module.terms(chunk)
            errors.append(error)
            kls.append(kl)
            sq.append(((activated - chunk) ** 2).flatten(1).mean(1))
            peak = max(peak, float(chunk.max() - chunk.min()))
        mse = float(torch.cat(sq).mean())
        return {"mse": mse, "psnr": 10 * math.log10(max(peak, 1e-12) ** 2 / max(mse, 1e-12)),
                "kl": float(torch.cat(kls).mean()), "reconstruction": float(torch.cat(errors).mean())}

    def finish(self, module: AutoencoderObjective, dataset) -> dict[str, str]:
        """Latent normalisation from training data, then the held-out figures for the card."""
        stats, _ = normalize(module.tokenizer, dataset, samples=self.cfg.eval.normalize_samples)
        metrics = self.evaluate(module)
        return {"latent statistics before normalisation": stats.describe(),
                "held-out MSE": f"{metrics['mse']:.5f}", "held-out PSNR": f"{metrics['psnr']:.2f} dB",
                "held-out KL per latent value": f"{metrics['kl']:.4f}"}

    def export(self, module: AutoencoderObjective, folder: Path, figures: dict) -> None:
        save_tokenizer(module.tokenizer, self.cfg.tokenizer.name, folder, recipe=dump_recipe(self.cfg), figures=figures)

    def refresh_card(self, module: AutoencoderObjective, folder: Path, figures: dict) -> None:
        self.export(module, folder, figures)  # small, and finish() changed the normalisation buffers

    def describe_output(self, output: Path) -> tuple[str, str]:
        return "tokenizer folder", (f"an AR recipe uses it as model.tokenizer: {{name: {self.cfg.tokenizer.name}, "
                                    f"path: {output}}}; not a model for `carl sample`")

    def preview(self, module: AutoencoderObjective, source: DataSource, path: Path) -> Path | None:
        """Originals above their reconstructions, ``eval.preview_rows`` pairs of rows of 10."""
        rows = self.cfg.eval.preview_rows
        heldout = self.heldout()
        x = heldout[torch.linspace(0, len(heldout) - 1, 10 * rows).long()]  # spread over the split (often sorted)
        device = next(module.parameters()).device
        recon = reconstruct(module.tokenizer, x.to(device)).float().cpu()
        originals, rebuilt = source.render(x.float()), source.render(recon)
        if originals is None:
            return None
        pairs = np.concatenate([np.stack([originals[r * 10:(r + 1) * 10], rebuilt[r * 10:(r + 1) * 10]]) for r in range(rows)])
        path.parent.mkdir(parents=True, exist_ok=True)
        tile(pairs.reshape(-1, *pairs.shape[2:]), 2 * rows).save(path)
        return path
