"""The three ways `lumi adapt` trains a frozen core: LoRA (HF peft), bricks, full fine-tuning.

- ``lora``: peft's LoRA on chosen ``nn.Linear`` layers (default: the attention projections q/k/v/o as they
  are named in the model). ``B`` starts at zero, so the adapted model starts equal to the core.
  Trainable parameters: ``rank * (in + out)`` per layer. Foldable into the weights (``merge``).
- ``brick``: a low-rank residual adapter after every block of the model's residual block lists,
  ``h -> h + up(gelu(down(rmsnorm(h))))`` with ``up`` zero-initialised (the core again at step 0).
  Trainable parameters: ``2 * rank * d`` per block (d: the width of the residual stream). A brick is a new
  module between blocks, so it cannot be folded into the core's weights.
- ``full``: every parameter trains: the reference point for forgetting.

Residual block lists are found by probing, not by name, so plugins qualify too: an ``nn.ModuleList`` each of
whose modules is called with a float tensor and returns a tensor of the same shape. A list nested inside
another one's blocks (MoE experts) is left out. A model without one (e.g. a plugin whose blocks return
tuples) cannot take bricks; the error says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from lumi.errors import LumiError, closest

METHODS = ("lora", "brick", "full")
# Default LoRA targets: the attention projections, as llama and most of the zoo name them.
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
BRICKS_ATTRIBUTE = "adapter_bricks"  # the ModuleDict of bricks added to the core model
PROBE_LENGTH = 16


@dataclass
class Adapter:
    """What was attached to a model: enough to attach the same again and to fold it in."""

    method: str
    rank: int | None
    alpha: float | None
    modules: list[str]  # lora: the adapted linear layers; brick: the blocks followed by a brick; full: []
    tuner: Any = None  # lora: the peft LoraModel (its merge_and_unload folds the adapter in)

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "rank": self.rank, "alpha": self.alpha, "modules": self.modules}


def check_method(method: str) -> None:
    if method not in METHODS:
        raise LumiError(
            f"--method must be one of {', '.join(METHODS)}; got {method!r}{closest(method, METHODS)}"
        )


def attach(
    model: nn.Module, method: str, rank: int, alpha: float | None, targets: list[str] | None
) -> Adapter:
    """Freeze ``model`` and attach the method's trainable part in place (full: unfreeze everything).

    ``targets``: lora: linear layer names (a leaf name such as ``q_proj`` matches it in every block, a
    dotted path one layer); brick: block lists (``blocks``) or single blocks (``blocks.3``); None = the
    defaults. Random initialisation draws from torch's global generator: seed it first."""
    check_method(method)
    if method == "full":
        if targets:
            raise LumiError(
                "--targets applies to --method lora or brick; full fine-tuning trains every parameter"
            )
        for p in model.parameters():
            p.requires_grad_(True)
        return Adapter("full", None, None, [])
    if rank < 1:
        raise LumiError(f"--rank must be >= 1, got {rank}")
    if method == "lora":
        return _attach_lora(model, rank, alpha if alpha is not None else float(rank), targets)
    return _attach_bricks(model, rank, targets)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (the adapter; every weight for full), by name, detached and contiguous."""
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load an adapter saved by ``trainable_state`` into a model with the same adapter attached."""
    expected = set(trainable_state(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        what = f"lacks {missing[:3]}" if missing else f"has unknown tensors {unexpected[:3]}"
        raise LumiError(f"adapter weights {where} do not fit the adapted model: it {what}")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, tensor in state.items():
            if params[name].shape != tensor.shape:
                raise LumiError(
                    f"adapter weights {where}: {name} has shape {tuple(tensor.shape)}, the model "
                    f"{tuple(params[name].shape)}"
                )
            params[name].copy_(tensor)


def check_mergeable(method: str) -> None:
    if method == "brick":
        raise LumiError(
            "a brick cannot be merged: it adds a new residual module between blocks, which no weight of the "
            "core can absorb; use the adapter directory with lumi eval / lumi generate instead of --merge"
        )


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def merge(model: ModuleT, adapter: Adapter) -> ModuleT:
    """The core with the adapter folded into its weights (same module names as the core)."""
    check_mergeable(adapter.method)
    if adapter.method == "lora":
        merged = cast(ModuleT, adapter.tuner.merge_and_unload())  # peft returns the model it was given
        for p in merged.parameters():
            p.requires_grad_(True)
        return merged
    return model


# -- LoRA ------------------------------------------------------------------------------------------


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The model's nn.Linear layers with a weight parameter (a part frozen into buffers by design, like
    bltpatch's patcher, is not for adapting)."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and isinstance(m.weight, nn.Parameter)
    }


def resolve_linear_targets(model: nn.Module, targets: list[str] | None) -> list[str]:
    """Full names of the linear layers ``targets`` name (default: the attention projections)."""
    linears = linear_layers(model)
    modules = dict(model.named_modules())
    leaves = sorted({n.rsplit(".", 1)[-1] for n in linears})
    if not targets:
        found = [n for n in linears if n.rsplit(".", 1)[-1] in ATTENTION_PROJECTIONS]
        if not found:
            others = (
                f"name others with --targets: {', '.join(leaves[:12])}"
                if leaves
                else ("it has no nn.Linear layers at all: use --method brick or full")
            )
            raise LumiError(
                f"{type(model).__name__} has no linear layer named {'/'.join(ATTENTION_PROJECTIONS)} (the "
                f"default LoRA targets); {others}"
            )
        return found
    chosen: list[str] = []
    for target in targets:
        hits = [n for n in modules if n and (n == target or n.endswith("." + target))]
        if not hits:
            hint = closest(target, leaves) or closest(target, list(linears))
            raise LumiError(
                f"--targets {target!r}: {type(model).__name__} has no layer of that name{hint}; its linear "
                f"layers are named {', '.join(leaves[:16]) or 'nothing'}"
            )
        not_linear = [n for n in hits if n not in linears]
        if not_linear:
            raise LumiError(
                f"--targets {target!r}: {not_linear[0]} is a {type(modules[not_linear[0]]).__name__}, not an "
                f"nn.Linear; LoRA here adapts linear layers ({', '.join(leaves[:16])})"
            )
        chosen += [n for n in hits if n not in chosen]
    return chosen


def lora_param_count(model: nn.Module, modules: list[str], rank: int) -> int:
    """rank x (in + out) per adapted linear layer: A is [rank, in], B is [out, rank]."""
    linears = linear_layers(model)
    return sum(rank * (linears[n].in_features + linears[n].out_features) for n in modules)


def _attach_lora(model: nn.Module, rank: int, alpha: float, targets: list[str] | None) -> Adapter:
    try:
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel
    except ImportError:
        raise LumiError(
            "--method lora needs HF peft: pip install 'lumi-lab[adapt]' (or pip install peft)"
        ) from None
    modules = resolve_linear_targets(model, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    # Exact module names, so peft adapts exactly the layers resolved (and recorded) here. B = 0 at init.
    # peft annotates lora_alpha as int; it only ever computes alpha / r, so a float scale is fine.
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]
        lora_dropout=0.0,
        target_modules=modules,
        bias="none",
    )
    tuner = LoraModel(model, config, "default")  # injects in place: ``model`` stays the model that runs
    return Adapter("lora", rank, alpha, modules, tuner)


# -- bricks ----------------------------------------------------------------------------------------


class Brick(nn.Module):
    """``h -> h + up(gelu(down(rmsnorm(h))))``: a low-rank residual adapter whose ``up`` starts at zero, so a
    new brick passes its input through unchanged. The norm has no gain (the parameter count stays 2 r d)."""

    def __init__(self, width: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank, bias=False)
        self.up = nn.Linear(rank, width, bias=False)
        nn.init.normal_(self.down.weight, std=width**-0.5)
        nn.init.zeros_(self.up.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = F.rms_norm(h, (h.shape[-1],))
        return h + self.up(F.gelu(self.down(z)))


def brick_param_count(widths: dict[str, int], rank: int) -> int:
    """2 x rank x d per brick (down [rank, d] and up [d, rank], no biases)."""
    return sum(2 * rank * d for d in widths.values())


def residual_block_lists(model: nn.Module) -> dict[str, dict[str, int]]:
    """{list name: {block name: width}} of the model's residual block lists, found by one probing forward."""
    lists = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and any(True for _ in m.parameters())
    }
    seen: dict[str, list[tuple[bool, int]]] = {}
    handles = []

    def recorder(block_name: str) -> Any:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0] if args else None
            if (
                isinstance(x, torch.Tensor)
                and x.is_floating_point()
                and x.ndim >= 2
                and isinstance(output, torch.Tensor)
                and output.shape == x.shape
            ):
                seen.setdefault(block_name, []).append((True, int(x.shape[-1])))
            else:
                seen.setdefault(block_name, []).append((False, 0))

        return hook

    for list_name, blocks in lists.items():
        for i, block in enumerate(blocks):
            handles.append(block.register_forward_hook(recorder(f"{list_name}.{i}")))
    limit = _max_context(model)
    length = PROBE_LENGTH if limit is None else min(PROBE_LENGTH, limit)
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 2))
    device = next(model.parameters()).device
    tokens = (torch.arange(2 * length, device=device).reshape(2, length) * 7) % vocab
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(tokens)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    found: dict[str, dict[str, int]] = {}
    for list_name, blocks in lists.items():
        names = [f"{list_name}.{i}" for i in range(len(blocks))]
        calls = [seen.get(n) for n in names]
        if all(c and all(ok for ok, _ in c) for c in calls):
            found[list_name] = {n: seen[n][0][1] for n in names}
    # A list inside another list's blocks (MoE experts inside llama blocks) is part of those blocks.
    return {n: v for n, v in found.items() if not any(n.startswith(o + ".") for o in found if o != n)}


def resolve_brick_targets(model: nn.Module, targets: list[str] | None) -> dict[str, int]:
    """{block name: width} of the blocks that get a brick (default: every block of every residual list)."""
    lists = residual_block_lists(model)
    if not lists:
        raise LumiError(
            f"a brick cannot attach to {type(model).__name__}: it has no list of residual blocks (an "
            "nn.ModuleList whose modules map hidden states [B, T, d] to the same shape); use --method lora or full"
        )
    blocks = {b: w for per_list in lists.values() for b, w in per_list.items()}
    if not targets:
        return blocks
    chosen: dict[str, int] = {}
    for target in targets:
        if target in lists:
            chosen.update(lists[target])
        elif target in blocks:
            chosen[target] = blocks[target]
        else:
            raise LumiError(
                f"--targets {target!r}: {type(model).__name__} has no residual block list or block of that "
                f"name{closest(target, [*lists, *blocks])}; its block lists: {', '.join(lists)} (or one block, "
                f"e.g. {next(iter(blocks))})"
            )
    return chosen


def _attach_bricks(model: nn.Module, rank: int, targets: list[str] | None) -> Adapter:
    widths = resolve_brick_targets(model, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    device = next(model.parameters()).device
    bricks = nn.ModuleDict({_key(b): Brick(w, rank) for b, w in widths.items()}).to(device)
    model.add_module(BRICKS_ATTRIBUTE, bricks)
    modules = dict(model.named_modules())
    for block_name in widths:
        brick = cast(Brick, bricks[_key(block_name)])
        modules[block_name].register_forward_hook(_apply_brick(brick))
    return Adapter("brick", rank, None, list(widths))


def _apply_brick(brick: Brick) -> Any:
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return brick(output)

    return hook


def _key(block_name: str) -> str:
    return block_name.replace(".", "__")  # ModuleDict keys cannot hold dots


def _max_context(model: nn.Module) -> int | None:
    limit = getattr(model, "max_context", None)
    return limit() if callable(limit) else None
