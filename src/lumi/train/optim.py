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

Cost: Muon's Newton–Schulz iteration runs *batched* over every hidden matrix of the same
(oriented) shape, e.g. all q/k/v/o projections of a model in one ``[N, d, d]`` stack, and the
gate/up/down MLP matrices together once the tall ones are transposed (fewer, larger kernels: what
matters on accelerators and for many small matrices). On a CPU the iteration is FLOP-bound, so the
bigger saving is the Gram form for wide float32 matrices (``_ns_gram``): the same iterates for about
half the FLOPs at a 4:1 aspect ratio. benchmarks/muon_overhead.py measures the step-time overhead.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any, cast

import torch
from torch import nn

from lumi.train.config import OptimSection

# Quintic Newton–Schulz coefficients (Keller Jordan's Muon): chosen to maximise the slope at 0 so
# small singular values grow fast; the iterates oscillate in about [0.7, 1.2], which is fine for
# an update direction.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately replace ``g`` by the nearest semi-orthogonal matrix U V^T, per matrix.

    ``g`` is ``[m, n]`` or a batch ``[..., m, n]``; every matrix is normalised by its own Frobenius
    norm and iterated independently, so a stack gives the same result as a loop (up to float
    rounding). A quintic Newton–Schulz iteration on X = g / ||g||_F: X <- a X + (b A + c A^2) X with
    A = X X^T. The coefficients push every singular value into roughly [0.7, 1.2] within five
    steps (exact orthogonality is not needed for Muon's update direction). Works in bf16 on
    accelerators and float32 on CPU, where bf16 matmuls are about 100x slower.
    """
    if g.ndim < 2:
        raise ValueError(f"orthogonalize needs a matrix or a batch of matrices, got shape {tuple(g.shape)}")
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:  # iterate on the smaller Gram matrix
        x = x.mT
    x = x / (torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True) + eps)
    lead = x.shape[:-2]
    x = x.reshape(-1, *x.shape[-2:])  # baddbmm wants exactly one batch dimension
    short, long = x.shape[-2:]
    # For wide float32 matrices iterate on the small Gram matrix alone (see _ns_gram): same result,
    # about half the FLOPs at long = 4 x short. Kept off bf16, where the Gram form loses accuracy.
    if x.dtype == torch.float32 and long * 2 > short * 3:
        x = _ns_gram(x, steps)
    else:
        x = _ns_plain(x, steps)
    x = x.reshape(*lead, *x.shape[-2:])
    if transposed:
        x = x.mT
    return x.to(g.dtype)


def _ns_plain(x: torch.Tensor, steps: int) -> torch.Tensor:
    """The textbook iteration on ``x`` [N, s, l]: 2 s^2 l + s^3 multiply-adds per step."""
    a, b, c = NS_COEFFS
    for _ in range(steps):
        gram = x @ x.mT
        # baddbmm fuses the scale-and-add into the matmul: fewer temporaries and kernel launches.
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, poly, x, beta=a, alpha=1.0)
    return x


def _ns_gram(x: torch.Tensor, steps: int) -> torch.Tensor:
    """The same iteration carried on the s x s Gram matrix only, for wide ``x`` [N, s, l].

    X_{k+1} = F_k X_k with F_k = a I + b A_k + c A_k^2 a polynomial of A_k = X_k X_k^T, so
    X_k = Q_k X_0 with Q_{k+1} = F_k Q_k, and A_{k+1} = F_k A_k F_k. Only the first Gram matrix and
    the final Q X_0 touch the long side: 2 s^2 l + ~4 s^3 per step in total, cheaper than the plain
    form once l > 1.5 s.
    """
    a, b, c = NS_COEFFS
    gram = x @ x.mT
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    q: torch.Tensor | None = None
    for k in range(steps):
        f = torch.baddbmm(torch.add(eye * a, gram, alpha=b), gram, gram, alpha=c)
        q = f if q is None else f @ q
        if k < steps - 1:
            gram = f @ gram @ f
    assert q is not None
    return q @ x


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton–Schulz, for 2-D (or flattenable) hidden weight matrices.

    update = orthogonalize(nesterov momentum) * sqrt(max(1, rows / cols)); p <- p (1 - lr wd) - lr update.
    The aspect-ratio factor keeps the per-element update size comparable for tall matrices.
    With ``batched`` (the default), matrices whose 2-D views have the same shape up to a transpose
    are orthogonalised together in one stacked Newton–Schulz iteration; the result equals the
    one-matrix-at-a-time path up to float rounding (``batched=False`` keeps that path for tests).
    The state is one ``momentum_buffer`` per parameter either way, so checkpoints are interchangeable.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        ns_steps: int = 5,
        batched: bool = True,
    ) -> None:
        if ns_steps < 1:
            raise ValueError(f"ns_steps must be >= 1, got {ns_steps}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "ns_steps": ns_steps,
        }
        super().__init__(params, defaults)
        self.batched = batched

    @torch.no_grad()
    def step(self, closure=None):  # torch API
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                bufs.append(state["momentum_buffer"])
            # foreach: one dispatch for all matrices instead of a Python loop of tiny ops.
            torch._foreach_mul_(bufs, mom)
            torch._foreach_add_(bufs, grads)
            moms = torch._foreach_add(grads, bufs, alpha=mom) if group["nesterov"] else bufs
            updates = self._orthogonalized(moms, group["ns_steps"])
            if wd:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            for p, u in zip(params, updates, strict=True):
                rows, cols = p.shape[0], p[0].numel()
                p.add_(u.reshape(p.shape), alpha=-lr * max(1.0, rows / cols) ** 0.5)
        return loss

    def _orthogonalized(self, moms: list[torch.Tensor], steps: int) -> list[torch.Tensor]:
        """Orthogonalised 2-D views of ``moms`` (same order), batching same-shape matrices when enabled."""
        mats = [m.reshape(m.shape[0], -1) for m in moms]
        if not self.batched:
            return [orthogonalize(m, steps) for m in mats]
        # Bucket by the wide orientation [short, long], so a [4d, d] up-projection and a [d, 4d]
        # down-projection share one stack; transposing is free and NS is transpose-equivariant.
        buckets: dict[tuple, list[int]] = defaultdict(list)
        for i, m in enumerate(mats):
            short, long = sorted(m.shape)
            buckets[(short, long, m.dtype, m.device)].append(i)
        out: list[torch.Tensor | None] = [None] * len(mats)
        for idx in buckets.values():
            wide = [mats[i].mT if mats[i].shape[0] > mats[i].shape[1] else mats[i] for i in idx]
            if len(wide) == 1:
                ortho = [orthogonalize(wide[0], steps)]
            else:
                ortho = list(orthogonalize(torch.stack(wide), steps).unbind(0))
            for i, o in zip(idx, ortho, strict=True):
                out[i] = o.mT if mats[i].shape[0] > mats[i].shape[1] else o
        return cast("list[torch.Tensor]", out)  # every slot filled: the buckets cover every index


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


def build_optimizer(
    model: nn.Module, cfg: OptimSection, vocab_size: int, device: torch.device
) -> OptimizerSet:
    roles = param_roles(model, vocab_size)
    adam_kwargs: dict[str, Any] = {"betas": tuple(float(b) for b in cfg.betas), "eps": cfg.eps}
    # The fused kernel is the fastest AdamW on CPU and CUDA alike; fall back to foreach elsewhere.
    adam_kwargs["fused" if device.type in ("cpu", "cuda") else "foreach"] = True

    def adam_group(params: list[nn.Parameter], decay: bool, lr: float) -> dict[str, Any]:
        return {"params": params, "weight_decay": cfg.weight_decay if decay else 0.0, "lr": lr, "base_lr": lr}

    if cfg.name == "adamw":
        groups = [
            adam_group(roles["matrix"] + roles["embedding"], True, cfg.lr),
            adam_group(roles["vector"], False, cfg.lr),
        ]
        return OptimizerSet({"adamw": torch.optim.AdamW([g for g in groups if g["params"]], **adam_kwargs)})
    # muon
    optimizers: dict[str, torch.optim.Optimizer] = {}
    if roles["matrix"]:
        optimizers["muon"] = Muon(
            [{"params": roles["matrix"], "lr": cfg.muon_lr, "base_lr": cfg.muon_lr}],
            lr=cfg.muon_lr,
            momentum=cfg.muon_momentum,
            weight_decay=cfg.muon_weight_decay,
            ns_steps=cfg.muon_ns_steps,
        )
    groups = [adam_group(roles["embedding"], True, cfg.lr), adam_group(roles["vector"], False, cfg.lr)]
    groups = [g for g in groups if g["params"]]
    if groups:
        optimizers["adamw"] = torch.optim.AdamW(groups, **adam_kwargs)
    return OptimizerSet(optimizers)
