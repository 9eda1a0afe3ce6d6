"""What `lumi bench` measures: a Lumi model, or HF's LlamaForCausalLM with the same dims.

Each subject offers the same four workloads on the same random tokens:
    train_step()           forward, cross-entropy, backward, gradient clipping, fused AdamW step
    prefill(tokens)        one forward over [B, T] without gradients
    decode(prompt, n)      greedy decoding of n new tokens per row; through the KV cache when the model
                           has one (Lumi: ``supports_cache``; HF: ``generate`` with its cache), else by
                           re-running the whole sequence per token
    cache_bytes(...)       bytes the cache adds per token and sequence
Both sides use the same optimizer kernel (fused AdamW, HF's Trainer default) and the same loss
code, so a training ratio compares the model code, not the optimizer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lumi.errors import LumiError
from lumi.models.base import LumiModel


@dataclass
class BenchShape:
    """The workloads' sizes: training/prefill batch x seq_len; decode from a prompt of prompt_len."""

    seq_len: int = 256
    batch: int = 8
    prompt_len: int = 64
    new_tokens: int = 64
    decode_batches: tuple[int, ...] = (1, 8)


class Subject:
    """One model under test. Subclasses implement the model call; the workloads are shared."""

    name: str
    model: nn.Module
    vocab_size: int
    device: torch.device
    autocast_dtype: torch.dtype | None
    has_cache: bool
    compiled: bool = False

    def __init__(self, name: str, model: nn.Module, vocab_size: int, device: torch.device,
                 autocast_dtype: torch.dtype | None) -> None:  # fmt: skip
        self.name, self.vocab_size, self.device, self.autocast_dtype = (
            name,
            vocab_size,
            device,
            autocast_dtype,
        )
        self.model = model.to(device)
        self.train_model: nn.Module = self.model
        fused = device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=1e-4,
            betas=(0.9, 0.95),
            weight_decay=0.1,
            **({"fused": True} if fused else {}),
        )

    def compile(self) -> None:
        self.train_model = torch.compile(self.model)  # type: ignore[assignment]
        self.compiled = True

    def autocast(self) -> contextlib.AbstractContextManager:
        from lumi.train.runtime import autocast_context

        return autocast_context(self.device, self.autocast_dtype)

    def logits(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        return model(tokens)

    def aux_loss(self) -> torch.Tensor | float:
        return 0.0

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model.train()
        with self.autocast():
            logits = self.logits(self.train_model, x)
            loss = (
                F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1)) + self.aux_loss()
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with self.autocast():
            return self.logits(self.model, tokens)

    def decode(self, prompt: torch.Tensor, new_tokens: int) -> Any:  # pragma: no cover - abstract
        """Greedy continuation of ``prompt`` [B, P] by ``new_tokens``; returns the cache (or None)."""
        raise NotImplementedError

    def cache_bytes(self, cache: Any) -> int:
        """Bytes held by a decoding cache (every tensor reachable from its public attributes)."""
        return sum(t.numel() * t.element_size() for t in _tensors(cache))


class LumiSubject(Subject):
    def __init__(
        self, name: str, model: LumiModel, device: torch.device, autocast_dtype: torch.dtype | None
    ) -> None:
        super().__init__(name, model, model.config.vocab_size, device, autocast_dtype)
        self.lumi_model = model
        self.has_cache = model.supports_cache

    def aux_loss(self) -> torch.Tensor | float:
        losses = self.lumi_model.aux_losses()
        return sum(losses.values()) if losses else 0.0

    def decode(self, prompt: torch.Tensor, new_tokens: int) -> Any:
        from lumi.generate import decode_greedy  # runs under inference_mode itself

        self.model.eval()
        with self.autocast():
            _, cache = decode_greedy(self.lumi_model, prompt, new_tokens, use_cache=self.has_cache)
        return cache


class HFLlamaSubject(Subject):
    """transformers' LlamaForCausalLM with a Lumi `llama` config's dims (SDPA attention)."""

    def __init__(self, name: str, lumi_model: LumiModel, device: torch.device, autocast_dtype: torch.dtype | None,
                 max_positions: int) -> None:  # fmt: skip
        from transformers import LlamaForCausalLM

        from lumi.export.hf import hf_config

        config = hf_config(lumi_model.config, sep_id=0, max_positions=max_positions)  # type: ignore[arg-type]
        torch.manual_seed(0)
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa")
        super().__init__(name, model, lumi_model.config.vocab_size, device, autocast_dtype)
        self.has_cache = True

    def logits(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        return model(input_ids=tokens, use_cache=False).logits

    @torch.no_grad()
    def decode(self, prompt: torch.Tensor, new_tokens: int) -> Any:
        self.model.eval()
        with self.autocast():
            out = self.model.generate(  # type: ignore[operator]
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
                eos_token_id=None,
                return_dict_in_generate=True,
            )
        if out.sequences.shape[1] != prompt.shape[1] + new_tokens:
            raise LumiError(
                f"HF generate stopped after {out.sequences.shape[1] - prompt.shape[1]} of {new_tokens} tokens"
            )
        # transformers >= 5 names the cache `cache`, earlier versions `past_key_values`
        return out.get("cache") if "cache" in out else out.get("past_key_values")


def is_hf_comparable(model: LumiModel) -> bool:
    """A plain `llama` (not a subclass that changes blocks) whose switches LlamaForCausalLM can express."""
    from lumi.export.hf import unsupported_switches
    from lumi.models.llama import Llama

    return type(model) is Llama and not unsupported_switches(model.config)


def _tensors(obj: Any, seen: set[int] | None = None) -> list[torch.Tensor]:
    """Every tensor reachable from a cache object (dataclasses, lists, dicts, HF Cache classes)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        items: Any = obj.values()
    elif isinstance(obj, (list, tuple)):
        items = obj
    elif hasattr(obj, "__dict__"):  # private attributes are capacity (preallocated buffers), not content
        items = [v for k, v in vars(obj).items() if not k.startswith("_")]
    else:
        return []
    out: list[torch.Tensor] = []
    for item in items:
        out.extend(_tensors(item, seen))
    return out
