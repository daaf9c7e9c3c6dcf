"""An exponential moving average of the weights, kept in fp32 beside the model.

Short fine-tuning runs on small data end wherever the last mini-batches left them: two
reward-model runs that differ only in data order land ±0.02 apart in held-out accuracy.
Averaging the weights over the last ~1/(1 - decay) steps smooths that out at the cost
of one fp32 copy of the parameters. ``torch.optim.swa_utils.AveragedModel`` keeps the
average in the model's own dtype, so under bf16 a 0.99 decay would round most updates
away; this one holds it in fp32 whatever the model trains in.
"""

from __future__ import annotations

import torch


class WeightAverage:
    def __init__(self, module: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        """Move the average toward the module's current weights (call once per optimizer step)."""
        current = [p.detach().float() for _, p in module.named_parameters()]
        torch._foreach_lerp_(list(self.shadow.values()), current, 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        """Overwrite the module's weights with the average (at the end of training)."""
        for name, p in module.named_parameters():
            p.copy_(self.shadow[name].to(device=p.device, dtype=p.dtype))
