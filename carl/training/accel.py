"""What keeps an accelerator busy during training, kept out of the loop itself.

- :class:`DeviceEMA`: the EMA of the weights on the model's device, updated by three fused
  foreach kernels whose decay is computed on the device (no host-device synchronisation).
- :func:`compile_model`: ``torch.compile`` of the backbone and the scoring rule's network, in place
  (``nn.Module.compile``), so parameter names, state dicts and checkpoints stay those of the eager model.
- :func:`optimizer_options` and :func:`loader_options`: fused AdamW, pinned memory and
  non-blocking copies on CUDA; on a CPU they change nothing.
- :func:`resolve_mixed_precision`: what ``mixed_precision: auto`` means on this machine.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def ema_decay(num_averaged: torch.Tensor, decay: float) -> torch.Tensor:
    """The decay of update ``n`` (``n`` updates done so far) as a 0-d tensor on ``num_averaged``'s device:
    0 for the first update (a copy), then ``min(decay, (1 + n) / (10 + n))``, so that a short run is
    not dominated by its initial weights (0.999^1000 would still give them 37%)."""
    dtype = torch.float32 if num_averaged.device.type == "mps" else torch.float64  # MPS has no float64
    n = num_averaged.to(dtype)
    return torch.where(n == 0, 0.0, ((1 + n) / (10 + n)).clamp(max=decay))


class DeviceEMA(AveragedModel):
    """An exponential moving average of a model's parameters (buffers are copied), updated as

        ema <- p + d_n (ema - p),   d_n = ema_decay(n, decay),

    i.e. ``lerp(ema, p, 1 - d_n)``, with one ``sub_``, ``mul_``, ``add_`` foreach kernel per
    device and dtype and the decay read from the ``n_averaged`` buffer on the device. The
    parent's ``update_parameters`` turns ``n_averaged`` into a Python bool twice per call, a
    device-to-host synchronisation every step on a GPU; this one never leaves the device.

    Args:
        model: the module to average (deep-copied, as by ``AveragedModel``).
        decay: the long-run decay (0.9999 in EAR).
        device: where the average lives; the trainer passes the accelerator's device.
    """

    def __init__(self, model: nn.Module, decay: float, device: torch.device | str | None = None):
        super().__init__(model, device=device)
        self.decay = decay

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
        for ema, param in zip(self.module.parameters(), model.parameters(), strict=True):
            ema_list, param_list = groups.setdefault((ema.device, ema.dtype), ([], []))
            ema_list.append(ema.detach())
            param_list.append(param.detach().to(ema.device, ema.dtype))  # a no-op on the same device
        decay = ema_decay(self.n_averaged, self.decay)
        for (device, dtype), (ema_list, param_list) in groups.items():
            torch._foreach_sub_(ema_list, param_list)  # ema - p
            torch._foreach_mul_(ema_list, decay.to(device, dtype))  # d (ema - p)
            torch._foreach_add_(ema_list, param_list)  # p + d (ema - p)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_buffer.detach().copy_(buffer.detach())
        self.n_averaged += 1


def compiled_parts(model: nn.Module, backbone: bool = True) -> list[nn.Module]:
    """The modules :func:`compile_model` compiles: the backbone (its blocks and final norm, one
    graph), MAR's encoder blocks when there are some (the encoder's input length follows the
    number of known tokens), and every child of the scoring rule that holds parameters (its MLP
    generator, denoiser or parameter head). ``backbone=False``: the head only."""
    parts: list[nn.Module] = []
    if backbone:
        parts += [model.backbone, *(getattr(model.backbone, "encoder_blocks", None) or [])]
    parts += [child for child in model.score.children() if any(True for _ in child.parameters())]
    return parts


def compile_model(model: nn.Module, mode: str = "default", backend: str = "inductor", backbone: bool = True) -> list[nn.Module]:
    """``torch.compile`` the backbone and the scoring rule's network of ``model`` in place.

    Random draws (orders, label dropout, generator noise) and data-dependent indexing stay in
    eager code between the compiled graphs, so a compiled model draws the same numbers as an
    eager one from the same seed. Shapes that vary from step to step (the number of targets
    under a masked order) are compiled once as dynamic, after which steps do not recompile.
    The causal order's KV-cache sampling loop grows the cache by one position per step: sample
    with ``generate(..., static_shapes=True)`` (the default on CUDA), whose fixed-shape cache
    lets a compiled backbone serve every step, or compile with ``backbone=False`` (the head
    only). Returns the compiled modules.

    Raises:
        ValueError: an unknown ``mode``.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}; got {mode!r}")
    parts = compiled_parts(model, backbone)
    for part in parts:
        part.compile(mode=None if mode == "default" else mode, backend=backend)
    return parts


def native_bf16() -> bool:
    """Whether the device training will run on multiplies bf16 in hardware: a CUDA GPU that
    supports it, or a CPU with AVX512-BF16 or AMX tiles. Elsewhere oneDNN emulates bf16 and an
    autocast step is slower than fp32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if torch.backends.mps.is_available():
        return False
    # private probes of torch.cpu (present since torch 2.3); absent ones count as no support
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def resolve_mixed_precision(choice: str) -> str:
    """``auto`` -> ``bf16`` where :func:`native_bf16`, else ``no``; the other choices as given."""
    if choice != "auto":
        return choice
    return "bf16" if native_bf16() else "no"


def optimizer_options(device: torch.device) -> dict:
    """Keyword arguments for ``torch.optim.AdamW``: the fused kernel on CUDA (one launch for all
    parameters), the default multi-tensor path elsewhere (the CPU results stay as they were)."""
    return {"fused": True} if device.type == "cuda" else {}


def loader_options(device: torch.device, num_workers: int) -> dict:
    """Keyword arguments for ``DataLoader``: pinned batches on CUDA (so the copy to the device is
    asynchronous; the accelerator's loader copies with ``non_blocking``), workers kept alive
    between epochs and two batches prefetched per worker."""
    options: dict = {"num_workers": num_workers, "pin_memory": device.type == "cuda"}
    if num_workers > 0:
        options.update(persistent_workers=True, prefetch_factor=2)
    return options
