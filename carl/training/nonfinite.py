"""Stop a diverging run before it writes anything from its non-finite steps.

Every step's loss (and, with clipping, its gradient norm) is folded into a flag that stays on the
device, so the loop never waits on the host for it; the flag is read where the loop reads the
device anyway: at log, sample and checkpoint boundaries. Before a checkpoint or an export the
weights themselves are checked too, so a NaN model is never written. ``train.skip_nonfinite: N``
instead skips the optimizer update of up to N bad steps (that needs a decision every step, so
only then does each step read the flag).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from carl.errors import NonFiniteError, RecipeError


class NonFiniteGuard:
    """Tracks non-finite steps of one run.

    Args:
        skip_limit: how many bad steps may have their update skipped (0: stop at the first).
        check_grads: whether a non-finite gradient norm counts (off under fp16, whose gradient
            scaler skips overflowing steps itself).
        device: where the flags live (the model's device).
    """

    def __init__(self, *, skip_limit: int, check_grads: bool, device: torch.device | str = "cpu"):
        if skip_limit < 0:
            raise RecipeError(f"train.skip_nonfinite: must be 0 or more, got {skip_limit}")
        self.skip_limit = skip_limit
        self.check_grads = check_grads
        self.pending = torch.zeros((), dtype=torch.bool, device=device)  # the current optimizer step
        self.bad_steps = torch.zeros((), device=device)  # not skipped, since the last check
        self.skipped = 0
        self.checked_step = 0

    @property
    def needs_grad_norm(self) -> bool:
        """Skipping decides on the gradient norm, which every process shares after the all-reduce."""
        return self.skip_limit > 0 and self.check_grads

    def observe_loss(self, loss: torch.Tensor) -> None:
        self.pending |= ~torch.isfinite(loss.detach())

    def end_step(self, step: int, grad_norm: torch.Tensor | None) -> bool:
        """Close the optimizer step ``step`` (1-based, before its update); True: skip its update.

        Raises:
            NonFiniteError: more than ``skip_limit`` bad steps.
        """
        bad = self.pending.clone()
        if grad_norm is not None and self.check_grads:
            bad |= ~torch.isfinite(grad_norm.detach()).to(bad.device)
        self.pending.zero_()
        if self.skip_limit == 0:
            self.bad_steps += bad
            return False
        if not _any_process(bad):
            return False
        self.skipped += 1
        if self.skipped > self.skip_limit:
            raise NonFiniteError(f"training diverged: {self.skipped} steps with a non-finite loss or gradient by step "
                                 f"{step}, more than train.skip_nonfinite={self.skip_limit} allows; stopped before "
                                 f"writing anything from them")
        return True

    def check(self, step: int, last_good: str) -> None:
        """Raise if a step since the last check was non-finite (reads the device flag).

        Args:
            step: the current step.
            last_good: what survives, for the message (e.g. the last checkpoint's path).
        """
        count = int(_sum_processes(self.bad_steps.clone()).item())
        if count:
            first = self.checked_step + 1
            where = f"at step {step}" if first == step else f"in {count} of steps {first}-{step}"
            raise NonFiniteError(
                f"training diverged: the loss or gradients were NaN or infinite {where}; stopped without writing a checkpoint or model from them "
                f"({last_good}); lower train.lr or set train.grad_clip and continue with --resume, or let up to N "
                f"bad steps be skipped with train.skip_nonfinite=N")
        self.checked_step = step

    def check_weights(self, step: int, last_good: str, **modules: torch.nn.Module) -> None:
        """Raise if any floating-point weight or buffer of ``modules`` is not finite."""
        for name, module in modules.items():
            tensors = [t for t in module.state_dict().values() if t.is_floating_point()]
            if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
                raise NonFiniteError(f"training diverged: the {name} weights are NaN or infinite at step {step}; "
                                     f"stopped without writing them ({last_good}); lower train.lr or set "
                                     f"train.grad_clip and continue with --resume")


def _sum_processes(value: torch.Tensor) -> torch.Tensor:
    value = value.float()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def _any_process(flag: torch.Tensor) -> bool:
    return bool(_sum_processes(flag).item() > 0)
