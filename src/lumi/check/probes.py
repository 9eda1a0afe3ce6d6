"""Causality probes: the engine behind `lumi check`'s causality rows and the post-training audit.

A leak is any dependence of the logits at position t on what a causal LM cannot know at t: tokens
after t in the same sequence, or other sequences of the batch (a batch-mate can hold this
sequence's continuation). Three probes, each of which misses leaks the others catch:

- perturbation: for a cut c, replace every token after c; logits at positions <= c must not move
  (tolerance scaled to the logits' size). Needs no autograd, so it sees no_grad-only paths.
- gradient: d(random projection of logits[0..c]) / d(input embedding at s) must be exactly 0 for
  every s > c. Catches leaks far below any float tolerance (a future token mixed in at 1e-7).
- batch: the logits of sequence 0 must not depend on the other sequences of its batch.

Leaks hide behind conditions, so every probe runs under a `Condition`: which weights (a gate that
is zero at initialisation hides a leak until training opens it), train or eval mode (an eval-only
path), autograd on or off (a no_grad fast path), batch size (a statistic over the batch). Lengths
matter too (a chunk memory that leaks from the second chunk on, a branch active only past position
200), so the callers probe short and long sequences with cuts at every boundary of a power of two.

Cost is bounded by giving each batch row its own cut: one forward (or backward) probes many cuts.
Rows of a causal model are independent, and a model whose rows are not is caught by the batch probe.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

# Perturbation tolerance on fp32 logits: absolute, scaled up by max |logit| when that exceeds 1
# (randomised and trained weights give larger logits, and float noise grows with them).
PERTURBATION_ATOL = 1e-5
# Elements of a [rows, T, V] logits tensor per forward/backward: bounds memory, sets rows per pass.
MAX_LOGIT_ELEMENTS = 1 << 23
# Boundaries of blocks this size and larger (8, 16, 32, ...) are always probed when cuts are sampled.
MIN_BOUNDARY_BLOCK = 8

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Condition:
    """Under what a probe ran: weights, mode, autograd, rows per forward."""

    weights: str  # init | randomised | trained | checkpoint
    mode: str  # eval | train
    grad: bool
    batch: int

    def describe(self) -> str:
        return f"{self.weights} weights, {self.mode} mode, grad {'on' if self.grad else 'off'}, batch {self.batch}"


@dataclass
class Leak:
    """The first leak a probe found (the one the user should look at)."""

    probe: str  # perturbation | gradient | batch
    T: int
    cut: int
    position: int  # the position whose logits moved (exact when every earlier cut was probed)
    source: int | None  # the future position responsible (gradient probe)
    size: float
    tolerance: float
    condition: Condition
    exact: bool = True

    def message(self) -> str:
        where = f"T={self.T}, {self.condition.describe()}"
        at = f"position {self.position}" if self.exact else f"a position <= {self.cut}"
        if self.probe == "perturbation":  # the moved position is measured, so it is always exact
            return (
                f"LEAK at position {self.position}: changing the tokens after position t={self.cut} ({where}) changed the logits "
                f"at position {self.position} by {self.size:.3g} (tolerance {self.tolerance:.3g})"
            )
        if self.probe == "gradient":
            return (
                f"LEAK at {at}: the gradient of the logits at positions <= {self.cut} ({where}) w.r.t. the "
                f"input embedding at future position {self.source} is {self.size:.3g} (must be exactly 0)"
            )
        if self.source is not None:
            return (
                f"LEAK across the batch: the gradient of sequence 0's logits ({where}) w.r.t. the input "
                f"embedding of another sequence at position {self.source} is {self.size:.3g} (must be exactly "
                "0); a sequence may only see its own tokens"
            )
        return (
            f"LEAK across the batch: the logits of sequence 0 at position {self.position} ({where}) changed by "
            f"{self.size:.3g} when the other sequences of the batch changed (tolerance {self.tolerance:.3g}); "
            "a sequence may only see its own tokens"
        )


@dataclass
class ProbeResult:
    """What one probe saw at one length under one condition."""

    probed: int = 0  # cuts (or batch pairs) probed
    leaking: int = 0  # of those, how many leak
    worst: float = 0.0  # max |Δlogit| (perturbation) or max |gradient| where it must be 0
    first: Leak | None = None
    applicable: bool = True  # False: the gradient probe on a model without an nn.Embedding fed the tokens
    batch: int = 0  # rows per forward it ran with


@dataclass
class Probe:
    """One probe at one length under one condition, and what it found."""

    kind: str
    T: int
    condition: Condition
    cuts_total: int
    result: ProbeResult = field(default_factory=ProbeResult)


# -- inputs ------------------------------------------------------------------------------------------


def random_tokens(rows: int, T: int, vocab_size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (rows, T), generator=g)


def select_cuts(T: int, max_cuts: int, seed: int) -> list[int]:
    """Cuts c in 0..T-2 to probe: all of them when affordable, else block boundaries plus a sample.

    Block boundaries (c = k*2^j - 1 and k*2^j, the last position of a block and the first of the
    next) are where patch, chunk and window models change behaviour; they are taken coarsest first
    (halves, quarters, ... down to blocks of 8) until the budget is spent, with the first and last two
    cuts always in; random cuts fill what is left.
    """
    n = T - 1
    if n <= 0:
        return []
    if n <= max_cuts:
        return list(range(n))
    chosen = [c for c in (0, 1, n - 2, n - 1) if 0 <= c < n]
    seen = set(chosen)
    block = 1 << max(0, (T - 1).bit_length() - 1)
    while block >= MIN_BOUNDARY_BLOCK and len(chosen) < max_cuts:
        for k in range(block, T, block):
            for c in (k - 1, k):
                if 0 <= c < n and c not in seen and len(chosen) < max_cuts:
                    seen.add(c)
                    chosen.append(c)
        block //= 2
    g = torch.Generator().manual_seed(seed)
    rest = [c for c in torch.randperm(n, generator=g).tolist() if c not in seen]
    return sorted(chosen + rest[: max(0, max_cuts - len(chosen))])


def rows_per_pass(T: int, vocab_size: int) -> int:
    return max(1, MAX_LOGIT_ELEMENTS // max(1, T * vocab_size))


@dataclass(frozen=True)
class CutPlan:
    """Which cuts one length is probed at, and how many rows a batched pass carries."""

    cuts: list[int]  # batched perturbation and gradient passes
    rows: int
    single: list[int]  # single-sequence (batch 1) perturbation passes


def plan_cuts(T: int, vocab_size: int, tokens: int, max_rows: int, single_cuts: int, seed: int) -> CutPlan:
    """``tokens // T`` cuts (block boundaries first, see select_cuts), at most ``max_rows`` per pass (fewer
    when the logits would not fit), and ``single_cuts`` of them for batch-1 passes."""
    cuts = select_cuts(T, max(1, tokens // T), seed)
    rows = max(1, min(max_rows, len(cuts), rows_per_pass(T, vocab_size)))
    single = select_cuts(T, single_cuts, seed + 1) if single_cuts < T - 1 else cuts
    return CutPlan(cuts, rows, single)


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- weights -------------------------------------------------------------------------------------------


@torch.no_grad()
def randomise_parameters(model: nn.Module, seed: int, scale: float = 1.0) -> None:
    """Re-draw every parameter so that every path is active, zero-initialised ones included.

    Matrices get N(0, scale^2 / fan_in) (unit-variance outputs); vectors and scalars (gains, biases,
    gates, decays) get 1 + 0.5 * scale * N(0, 1), so a gate initialised to 0 is now open. Buffers
    (masks, RoPE tables) are left alone: they are part of the architecture, not of the weights.
    """
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.ndim >= 2:
            fan_in = max(1, p[0].numel())
            value = torch.randn(p.shape, generator=g) * (scale / math.sqrt(fan_in))
        else:
            value = 1.0 + 0.5 * scale * torch.randn(p.shape, generator=g)
        p.copy_(value.to(device=p.device, dtype=p.dtype))


RANDOMISED_SCALES = (1.0, 0.25, 0.0625)  # tried in turn until the randomised model's logits are finite


def randomised_copy(
    model: nn.Module, forward: Forward, vocab_size: int, seq_len: int, seed: int
) -> nn.Module | None:
    """A copy of ``model`` with every parameter re-drawn (randomise_parameters) at the largest scale whose
    logits are finite; None when none is (the caller says the weight set was not probed)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = random_tokens(1, seq_len, vocab_size, seed).to(device)
    for scale in RANDOMISED_SCALES:
        other = copy.deepcopy(model)
        randomise_parameters(other, seed, scale)
        other.eval()
        with torch.no_grad():
            if torch.isfinite(forward(other, x)).all():
                return other
    return None


# -- the probes ----------------------------------------------------------------------------------------


class _Mode:
    """Put the model in train/eval mode and autograd on/off for a probe; restore both afterwards."""

    def __init__(self, model: nn.Module, cond: Condition) -> None:
        self.model, self.cond = model, cond

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.model.train(self.cond.mode == "train")
        self.grad = torch.set_grad_enabled(self.cond.grad)
        self.grad.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.grad.__exit__(*exc)
        self.model.train(self.was_training)


def _seeded_forward(forward: Forward, model: nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Forward with the RNG reset first: in train mode, dropout then draws the same masks for the
    reference and the perturbed batch (same shapes), so only the tokens differ."""
    torch.manual_seed(seed)
    out = forward(model, x)
    return out.detach().float()


def _tolerance(ref: torch.Tensor) -> float:
    peak = float(ref.abs().amax()) if ref.numel() else 0.0
    return PERTURBATION_ATOL * max(1.0, peak)


def _perturbed(x: torch.Tensor, cuts: list[int], vocab_size: int, g: torch.Generator) -> torch.Tensor:
    """Row i of ``x`` with every token after cuts[i] replaced by a different one."""
    out = x.clone()
    T = x.shape[1]
    pos = torch.arange(T)
    after = pos[None, :] > torch.tensor(cuts)[:, None]  # [rows, T]
    shift = torch.randint(1, vocab_size, x.shape, generator=g)
    changed = (x + shift) % vocab_size
    out[after] = changed[after]
    return out


def probe_perturbation(
    model: nn.Module,
    forward: Forward,
    T: int,
    vocab_size: int,
    cuts: list[int],
    cond: Condition,
    seed: int,
    device: torch.device,
) -> ProbeResult:
    """Change the tokens after each cut; the logits at positions <= cut must stay put.

    With ``cond.batch`` > 1 each row of a batch gets its own cut (rows = one sequence repeated); with
    batch 1 every cut is a forward of its own.
    """
    res = ProbeResult(batch=cond.batch)
    g = torch.Generator().manual_seed(seed + 1)
    base = random_tokens(1, T, vocab_size, seed)
    per_pass = 1 if cond.batch == 1 else max(1, min(cond.batch, rows_per_pass(T, vocab_size)))
    exact_upto = _exact_prefix(cuts)
    with _Mode(model, cond):
        for chunk in _chunks(cuts, per_pass):
            x = base.expand(len(chunk), T).contiguous()
            ref = _seeded_forward(forward, model, x.to(device), seed)
            out = _seeded_forward(forward, model, _perturbed(x, chunk, vocab_size, g).to(device), seed)
            tol = _tolerance(ref)
            for i, c in enumerate(chunk):
                per_pos = (out[i, : c + 1] - ref[i, : c + 1]).abs().amax(dim=-1).cpu()  # [c+1]
                bad = ~(per_pos <= tol)  # NaN counts as a leak
                res.worst = max(res.worst, float(per_pos.nan_to_num(float("inf")).max()))
                res.probed += 1
                if bad.any():
                    res.leaking += 1
                    if res.first is None:
                        p = int(bad.nonzero()[0, 0])
                        res.first = Leak(
                            "perturbation", T, c, p, None, float(per_pos[p]), tol, cond, exact=c <= exact_upto
                        )
    return res


def _exact_prefix(cuts: list[int]) -> int:
    """The largest c such that every cut 0..c is in ``cuts``: the first leaking cut up to there names the
    leaking position exactly (a leak t <- s shows at every cut t..s-1, so the first one is t)."""
    c = -1
    for want, have in enumerate(sorted(cuts)):
        if want != have:
            break
        c = have
    return c


def capture_input_embeddings(model: nn.Module, tokens: torch.Tensor) -> tuple[list[torch.Tensor], list]:
    """Forward hooks that swap the output of every nn.Embedding fed the token tensor for a leaf tensor
    we can differentiate with respect to (same values, so the forward is unchanged)."""
    captured: list[torch.Tensor] = []

    def fed_the_tokens(x: object) -> bool:  # the token tensor itself, or a copy/cast of it
        return (
            isinstance(x, torch.Tensor)
            and x.shape == tokens.shape
            and not x.is_floating_point()
            and x.device == tokens.device
            and torch.equal(x.to(tokens.dtype), tokens)
        )

    def hook(module: nn.Module, inputs: tuple, output: object) -> torch.Tensor | None:
        if (
            inputs
            and fed_the_tokens(inputs[0])
            and isinstance(output, torch.Tensor)
            and output.is_floating_point()
        ):
            leaf = output.detach().requires_grad_(True)
            captured.append(leaf)
            return leaf.clone()  # a non-leaf copy, so in-place edits inside the model stay legal
        return None

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Embedding)]
    return captured, handles


def _embedding_grads(
    model: nn.Module,
    forward: Forward,
    x: torch.Tensor,
    seed: int,
    weight: Callable[[torch.Tensor], torch.Tensor],
) -> list[torch.Tensor] | None:
    """Gradients of sum(weight(logits)) w.r.t. every captured input embedding, as [rows, T] maxima of
    |gradient| over the feature dims (NaN -> 1: a NaN gradient is not a proven zero). None: no embedding."""
    captured, handles = capture_input_embeddings(model, x)
    try:
        torch.manual_seed(seed)
        with torch.enable_grad():
            logits = forward(model, x)
    finally:
        for h in handles:
            h.remove()
    if not captured:
        return None
    if not logits.requires_grad:
        return [torch.zeros(x.shape)]
    loss = weight(logits.float()).sum()
    grads = torch.autograd.grad(loss, captured, allow_unused=True)
    out = []
    for gr in grads:
        if gr is not None:
            out.append(gr.detach().abs().flatten(2).amax(dim=2).nan_to_num(1.0).cpu())
    return out or [torch.zeros(x.shape)]


def probe_gradient(
    model: nn.Module,
    forward: Forward,
    T: int,
    vocab_size: int,
    cuts: list[int],
    cond: Condition,
    seed: int,
    device: torch.device,
) -> ProbeResult:
    """d(random projection of logits[i, 0..cut_i]) / d(input embedding [i, s]) == 0 exactly for s > cut_i.

    One backward covers a whole batch of cuts (one per row, distinct random rows). A leak t <- s is seen
    at every cut t..s-1, so probing every cut names t exactly.
    """
    res = ProbeResult(batch=cond.batch)
    per_pass = max(1, min(cond.batch, rows_per_pass(T, vocab_size)))
    exact_upto = _exact_prefix(cuts)
    g = torch.Generator().manual_seed(seed + 2)
    with _Mode(model, cond):
        for k, chunk in enumerate(_chunks(cuts, per_pass)):
            x = random_tokens(len(chunk), T, vocab_size, seed + 100 + k).to(device)
            cut = torch.tensor(chunk)[:, None]
            upto = torch.arange(T)[None, :] <= cut  # [rows, T]: the positions whose logits are projected
            # A random projection of each row's logits (rank one over positions x vocabulary, so it is
            # cheap at large V) that no leak can cancel except on a measure-zero set.
            r = (
                torch.randn(len(chunk), 1, vocab_size, generator=g)
                * (torch.randn(len(chunk), T, 1, generator=g) * upto[..., None])
            ).to(device)
            # The weight is used up within this iteration, so the late-bound `r` is the current one.
            grads = _embedding_grads(model, forward, x, seed, lambda logits: logits * r)  # noqa: B023
            if grads is None:
                res.applicable = False
                return res
            g_max = torch.stack(grads).amax(dim=0)  # [rows, T]
            future = ~upto
            for i, c in enumerate(chunk):
                vals = g_max[i][future[i]]
                res.probed += 1
                if vals.numel():
                    res.worst = max(res.worst, float(vals.max()))
                nz = (vals != 0).nonzero()
                if nz.numel():
                    res.leaking += 1
                    if res.first is None:
                        s = c + 1 + int(nz[0, 0])
                        res.first = Leak(
                            "gradient",
                            T,
                            c,
                            c,
                            s,
                            float(vals[int(nz[0, 0])]),
                            0.0,
                            cond,
                            exact=c <= exact_upto,
                        )
    return res


BATCH_ROWS = 3


def probe_batch(
    model: nn.Module,
    forward: Forward,
    T: int,
    vocab_size: int,
    cond: Condition,
    seed: int,
    device: torch.device,
) -> ProbeResult:
    """The logits of sequence 0 must not depend on sequences 1.. of its batch.

    Grad off: replace the other sequences wholesale (same batch shape) and compare sequence 0's logits.
    Grad on: additionally, the gradient of sequence 0's logits w.r.t. the other sequences' input
    embeddings must be exactly 0.
    """
    res = ProbeResult(batch=cond.batch)
    x = random_tokens(BATCH_ROWS, T, vocab_size, seed)
    other = random_tokens(BATCH_ROWS, T, vocab_size, seed + 7)
    other[0] = x[0]
    with _Mode(model, cond):
        ref = _seeded_forward(forward, model, x.to(device), seed)
        out = _seeded_forward(forward, model, other.to(device), seed)
        tol = _tolerance(ref[0])
        per_pos = (out[0] - ref[0]).abs().amax(dim=-1).cpu()
        bad = ~(per_pos <= tol)
        res.probed += 1
        res.worst = float(per_pos.nan_to_num(float("inf")).max())
        if bad.any():
            res.leaking += 1
            p = int(bad.nonzero()[0, 0])
            res.first = Leak("batch", T, T - 1, p, None, float(per_pos[p]), tol, cond)
            return res
        if cond.grad:
            g = torch.Generator().manual_seed(seed + 3)
            r = torch.zeros(BATCH_ROWS, T, 1)
            r[0] = torch.randn(T, 1, generator=g)
            r = (r * torch.randn(1, 1, vocab_size, generator=g)).to(device)
            grads = _embedding_grads(model, forward, x.to(device), seed, lambda logits: logits * r)
            if grads is not None:
                g_max = torch.stack(grads).amax(dim=0)[1:]  # rows 1.. : must be exactly 0
                res.probed += 1
                if (g_max != 0).any():
                    res.leaking += 1
                    res.worst = max(res.worst, float(g_max.max()))
                    s = int((g_max != 0).nonzero()[0, 1])
                    res.first = Leak("batch", T, T - 1, 0, s, float(g_max.max()), 0.0, cond)
    return res


def run_probe(
    kind: str,
    model: nn.Module,
    forward: Forward,
    T: int,
    vocab_size: int,
    cuts: list[int],
    cond: Condition,
    seed: int,
    device: torch.device,
) -> ProbeResult:
    """One probe by name: perturbation | gradient | batch (which ignores ``cuts``)."""
    if kind == "perturbation":
        return probe_perturbation(model, forward, T, vocab_size, cuts, cond, seed, device)
    if kind == "gradient":
        return probe_gradient(model, forward, T, vocab_size, cuts, cond, seed, device)
    return probe_batch(model, forward, T, vocab_size, cond, seed, device)
