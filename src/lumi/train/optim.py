"""Optimizers: AdamW, and Muon for hidden matrices with Adam for everything else.

Parameter roles (decided from shapes and module types, so user architectures need no annotations):
- *embedding-like*: parameters of ``nn.Embedding`` modules and every matrix with a ``vocab_size``
  dimension (token embeddings, the output head);
- *hidden matrices*: every other parameter with >= 2 dimensions (attention / MLP projections);
- *vector-like*: 0-D / 1-D parameters (norm gains, biases, learned scalars).

AdamW decays matrices only: hidden matrices and embedding-like matrices get ``weight_decay``;
vector-like parameters never do (decaying a norm gain toward 0 is not regularisation).
Muon (``optim.name=muon``) updates hidden matrices with orthogonalised Nesterov momentum at
``muon_lr`` (decay ``muon_weight_decay``) and hands embedding-like and vector-like parameters to
AdamW at ``lr`` with the same decay rule as above.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from lumi.train.config import OptimSection


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately replace ``g`` (2-D) by the nearest semi-orthogonal matrix U V^T.

    A quintic Newton–Schulz iteration on X = g / ||g||_F: X <- a X + (b A + c A^2) X with
    A = X X^T. The coefficients push every singular value into roughly [0.7, 1.2] within five
    steps (exact orthogonality is not needed for Muon's update direction). Works in bf16 on
    accelerators and float32 on CPU, where bf16 matmuls are slow.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    transposed = x.shape[0] > x.shape[1]
    if transposed:  # iterate on the smaller Gram matrix
        x = x.mT
    x = x / (x.norm() + eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    if transposed:
        x = x.mT
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton–Schulz, for 2-D (or flattenable) hidden weight matrices.

    update = orthogonalize(nesterov momentum) * sqrt(max(1, rows / cols)); p <- p (1 - lr wd) - lr update.
    The aspect-ratio factor keeps the per-element update size comparable for tall matrices.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 0.02, momentum: float = 0.95,
                 weight_decay: float = 0.0, nesterov: bool = True, ns_steps: int = 5) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, ns_steps=ns_steps)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - torch API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(mom).add_(g)
                g = g.add(buf, alpha=mom) if group["nesterov"] else buf
                g2d = g.reshape(g.shape[0], -1)
                update = orthogonalize(g2d, group["ns_steps"]).view_as(p)
                scale = max(1.0, g2d.shape[0] / g2d.shape[1]) ** 0.5
                if wd:
                    p.mul_(1.0 - lr * wd)
                p.add_(update, alpha=-lr * scale)
        return loss


class OptimizerSet:
    """Several torch optimizers stepped together (Muon + AdamW), behaving like one.

    Every param group carries ``base_lr``; the schedule sets ``lr = base_lr * multiplier``.
    """

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def set_lr_multiplier(self, mult: float) -> None:
        for g in self.param_groups:
            g["lr"] = g["base_lr"] * mult

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state has parts {sorted(state)}, expected {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def param_roles(model: nn.Module, vocab_size: int) -> dict[str, list[nn.Parameter]]:
    """Split trainable parameters into 'embedding', 'matrix' and 'vector' (see module docstring)."""
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    roles: dict[str, list[nn.Parameter]] = {"embedding": [], "matrix": [], "vector": []}
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.ndim < 2:
            roles["vector"].append(p)
        elif id(p) in embedding_ids or vocab_size in p.shape:
            roles["embedding"].append(p)
        else:
            roles["matrix"].append(p)
    return roles


def build_optimizer(model: nn.Module, cfg: OptimSection, vocab_size: int, device: torch.device) -> OptimizerSet:
    roles = param_roles(model, vocab_size)
    adam_kwargs: dict[str, Any] = dict(betas=tuple(float(b) for b in cfg.betas), eps=cfg.eps)
    # The fused kernel is the fastest AdamW on CPU and CUDA alike; fall back to foreach elsewhere.
    adam_kwargs["fused" if device.type in ("cpu", "cuda") else "foreach"] = True

    def adam_group(params: list[nn.Parameter], decay: bool, lr: float) -> dict[str, Any]:
        return {"params": params, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": lr, "base_lr": lr}

    if cfg.name == "adamw":
        groups = [adam_group(roles["matrix"] + roles["embedding"], True, cfg.lr),
                  adam_group(roles["vector"], False, cfg.lr)]
        return OptimizerSet({"adamw": torch.optim.AdamW([g for g in groups if g["params"]], **adam_kwargs)})
    # muon
    optimizers: dict[str, torch.optim.Optimizer] = {}
    if roles["matrix"]:
        optimizers["muon"] = Muon([{"params": roles["matrix"], "lr": cfg.muon_lr, "base_lr": cfg.muon_lr}],
                                  lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.muon_weight_decay)
    groups = [adam_group(roles["embedding"], True, cfg.lr), adam_group(roles["vector"], False, cfg.lr)]
    groups = [g for g in groups if g["params"]]
    if groups:
        optimizers["adamw"] = torch.optim.AdamW(groups, **adam_kwargs)
    return OptimizerSet(optimizers)
