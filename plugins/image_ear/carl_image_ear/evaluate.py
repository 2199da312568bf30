"""``carl eval``: class-balanced generation and FID / Inception Score (/ precision-recall) with
torch-fidelity, the tool MAR and EAR report with.

torch-fidelity is an optional extra (``pip install carl-image-ear[eval]``), imported only here:
it needs torchvision. Its Inception weights are downloaded on first use; offline, pass them with
``--inception-weights`` (torch-fidelity's ``pt_inception-2015-12-05-6726825d.pth``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Annotated
from pathlib import Path

import annotated_types as at
import numpy as np
import torch
from tqdm.auto import tqdm

from carl.progress import interactive
from carl.metrics import Metric
from carl.errors import CarlError
from carl.ranges import check_ranges
from carl.model.samples import tile

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


@dataclass(frozen=True)
class EvalSettings:
    num_images: Annotated[int, at.Ge(1)] = 50_000
    batch_size: Annotated[int, at.Ge(1)] = 250
    num_steps: Annotated[int, at.Ge(1)] = 64
    cfg: Annotated[float, at.Ge(0)] = 3.0
    cfg_schedule: str = "linear"
    temperature: Annotated[float, at.Ge(0)] = 0.7
    seed: Annotated[int, at.Ge(0)] = 0

    def __post_init__(self) -> None:
        check_ranges(self)

    def describe(self, reference: str) -> str:
        """How figures were measured, for results.json and the card."""
        return (f"carl eval: {self.num_images:,} images, {self.num_steps} steps, CFG {self.cfg:g} {self.cfg_schedule}, "
                f"temperature {self.temperature:g}, seed {self.seed}, against {Path(str(reference)).name}")


def balanced_labels(num_images: int, num_classes: int) -> torch.Tensor:
    """``num_images`` labels, every class equally often (the first ones once more when it does not divide)."""
    return torch.arange(num_images) % num_classes


@torch.no_grad()
def generate_images(model, settings: EvalSettings, progress: bool = True) -> torch.Tensor:
    """uint8 images ``(N, 3, H, W)``, class-balanced, generated in batches from one seed."""
    num_classes = model.conditioner.config.num_classes
    labels = balanced_labels(settings.num_images, num_classes)
    generator = torch.Generator().manual_seed(settings.seed)
    out = []
    for start in tqdm(range(0, len(labels), settings.batch_size), desc="generating", unit="batch", disable=not interactive(progress)):
        images = model.generate(
            labels[start : start + settings.batch_size], num_steps=settings.num_steps, cfg=settings.cfg,
            cfg_schedule=settings.cfg_schedule, temperature=settings.temperature, generator=generator,
        )
        out.append((images.clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    images = torch.cat(out)
    return images.expand(-1, 3, -1, -1).contiguous() if images.shape[1] == 1 else images  # Inception reads RGB


class ImageTensors(torch.utils.data.Dataset):
    """What torch-fidelity reads: uint8 ``(3, H, W)`` tensors."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def fidelity_metrics(
    images: torch.Tensor, reference: str, *, inception_weights: str | None = None, precision_recall: bool = False,
) -> dict[str, float]:
    """FID and IS (and precision/recall) of ``images`` against ``reference``: a statistics file
    (``.npz`` with ``mu``/``sigma``) or a folder of real images."""
    try:
        fidelity = importlib.import_module("torch_fidelity")
    except ImportError as exc:
        raise CarlError("carl eval needs torch-fidelity: pip install 'carl-image-ear[eval]' (it brings torchvision)") from exc
    ref = Path(reference)
    if not ref.exists():
        raise CarlError(f"reference '{reference}' not found: give a statistics .npz file or a folder of real images")
    options = dict(
        input1=ImageTensors(images), cuda=torch.cuda.is_available(), isc=True, fid=True, prc=precision_recall,
        verbose=False, batch_size=min(256, len(images)),
    )
    if ref.is_dir():
        options["input2"] = str(ref)
    else:
        options["fid_statistics_file"] = str(ref)
    if inception_weights is not None:
        if not Path(inception_weights).is_file():
            raise CarlError(f"--inception-weights {inception_weights}: no such file")
        options["feature_extractor_weights_path"] = str(inception_weights)
    try:
        metrics = fidelity.calculate_metrics(**options)
    except (OSError, RuntimeError) as exc:
        if inception_weights is None and ("download" in str(exc).lower() or "urlopen" in str(exc).lower() or "connect" in str(exc).lower()):
            raise CarlError(f"the Inception weights could not be downloaded ({type(exc).__name__}); "
                            f"get {INCEPTION_FILE} and pass --inception-weights PATH") from exc
        raise
    names = {"frechet_inception_distance": "fid", "inception_score_mean": "is", "inception_score_std": "is_std",
             "precision": "precision", "recall": "recall"}
    return {short: float(metrics[long]) for long, short in names.items() if long in metrics}


def save_eval_grid(images: torch.Tensor, path: Path, per_row: int = 10, rows: int = 8) -> Path:
    count = min(len(images), per_row * rows)
    rows = max(1, count // per_row)
    pictures = images[: rows * per_row].permute(0, 2, 3, 1).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tile(np.ascontiguousarray(pictures), rows).save(path)
    return path


@dataclass(frozen=True)
class FIDConfig:
    """``reference``: real-image statistics (.npz) or a folder of real images. ``num_images``:
    generated per evaluation (class-balanced; 50,000 for reported figures, fewer during training)."""

    reference: str = ""
    num_images: Annotated[int, at.Ge(1)] = 10_000
    batch_size: Annotated[int, at.Ge(1)] = 250
    inception_weights: str | None = None
    precision_recall: bool = False

    def __post_init__(self) -> None:
        check_ranges(self)


class FID(Metric):
    """FID / IS (/ precision, recall) of class-balanced samples under the recipe's sampling settings."""

    Config = FIDConfig

    def __init__(self, config: FIDConfig):
        if not config.reference:
            raise ValueError("the fid metric needs `reference`: a statistics .npz file or a folder of real images")
        self.config = config

    def compute(self, model, recipe) -> dict[str, float]:
        s, c = recipe.sample, self.config
        settings = EvalSettings(num_images=c.num_images, batch_size=c.batch_size, num_steps=s.num_steps, cfg=s.cfg,
                                cfg_schedule=s.cfg_schedule, temperature=s.temperature, seed=s.seed)
        images = generate_images(model, settings, progress=False)
        return fidelity_metrics(images, c.reference, inception_weights=c.inception_weights, precision_recall=c.precision_recall)
