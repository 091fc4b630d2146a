"""The optimizer and its extras: SGD's parameter groups, a moving average of the weights (EMA) and
Lookahead's slow weights."""
from __future__ import annotations

import torch

from ..config import TrainConfig


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum; weight decay on conv/linear weights only (not on biases or BatchNorm). With
    ``bn_bias_lr`` other than 1 the BatchNorm biases get their own group, whose ``lr_scale`` multiplies
    the scheduled lr; frozen BatchNorm scales (``freeze_bn_scales``) are left out."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    bn_biases = {id(m.bias) for m in norms} if config.bn_bias_lr != 1 else set()
    if config.freeze_bn_scales:
        for norm in norms:
            norm.weight.requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trained if p.ndim > 1], "weight_decay": config.weight_decay},
              {"params": [p for p in trained if p.ndim <= 1 and id(p) not in bn_biases], "weight_decay": 0.0}]
    if bn_biases:
        groups.append({"params": [p for p in trained if id(p) in bn_biases], "weight_decay": 0.0,
                       "lr_scale": config.bn_bias_lr})
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov and config.momentum > 0)


def ema_decay_at(step: int, decay: float) -> float:
    """The average's decay after ``step`` steps: (1 + step) / (10 + step) up to ``decay`` (timm's ramp), so that
    a short run's average does not keep its first, untrained weights for thousands of steps."""
    return min(decay, (1 + step) / (10 + step))


def averaged_copy(model: torch.nn.Module, decay_now) -> torch.optim.swa_utils.AveragedModel:
    """A moving average of ``model``'s weights and buffers (BatchNorm's statistics too): each update moves
    it towards the model by 1 - ``decay_now()``."""
    def update(averaged: list, current: list, _count) -> None:
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1 - decay_now())
        else:  # BatchNorm's step counters
            torch._foreach_copy_(averaged, current)

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=update, use_buffers=True)


class Lookahead:
    """Lookahead (Zhang et al., 2019; airbench): slow weights that every ``steps`` steps move ``alpha`` of the way
    to the trained (fast) weights, which then restart from them; the optimizer's momentum is kept. Every
    floating tensor of the model's state moves, BatchNorm's statistics too (as airbench)."""

    def __init__(self, model: torch.nn.Module, steps: int, alpha: float = 0.5):
        self.model, self.steps, self.alpha = model, steps, alpha
        self.slow = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()
                     if tensor.is_floating_point()}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """``step``: steps taken; the last step of the run syncs too, so the run ends on slow weights."""
        if step % self.steps and step != total_steps:
            return
        current = self.model.state_dict()
        fast = [current[name] for name in self.slow]
        torch._foreach_lerp_(list(self.slow.values()), fast, self.alpha)
        torch._foreach_copy_(fast, list(self.slow.values()))
