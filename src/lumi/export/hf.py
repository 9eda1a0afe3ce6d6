"""`lumi export --format hf`: a `llama` run as a Hugging Face `LlamaForCausalLM` directory, self-checked.

Lumi's `llama` already uses HF's layout (half-split RoPE, RMSNorm weight without offset, no biases), so
the conversion is a renaming of parameters. Recipe switches `LlamaForCausalLM` cannot express are
refused, naming the switch. The tokenizer becomes a `tokenizer.json` that `AutoTokenizer` loads: the BPE
definition Lumi trained, or for `bytes` a byte-level vocabulary of 256 ids without merges; the
document separator is the special token `<|sep|>`, used as BOS and EOS, and text containing that
string is tokenized as text (split_special_tokens), as in Lumi.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lumi.errors import LumiError
from lumi.io import write_json, write_text_atomic

if TYPE_CHECKING:
    from lumi.data.tokenizers import Tokenizer
    from lumi.models.llama import Llama, LlamaConfig

SEP = "<|sep|>"
PARITY_TOLERANCE = 1e-4  # max |Δ logit| between Lumi and transformers on the check batch


def unsupported_switches(c: LlamaConfig) -> list[str]:
    """The recipe switches of ``c`` that LlamaForCausalLM cannot express (empty: exportable)."""
    out = []
    if c.mlp != "swiglu":
        out.append(f"mlp={c.mlp} (LlamaForCausalLM has a gated SiLU MLP only)")
    if c.qk_norm:
        out.append("qk_norm=true (no QK-norm in LlamaForCausalLM)")
    if c.logit_softcap is not None:
        out.append(f"logit_softcap={c.logit_softcap} (no logit soft-capping in LlamaForCausalLM)")
    return out


def hf_config(c: LlamaConfig, sep_id: int, max_positions: int) -> Any:
    from transformers import LlamaConfig as HFLlamaConfig

    kwargs: dict[str, Any] = dict(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.ffn,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.kv_heads,
        head_dim=c.dim_head,
        hidden_act="silu",
        max_position_embeddings=max_positions,
        initializer_range=c.init_std,
        rms_norm_eps=c.norm_eps,
        tie_word_embeddings=c.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=c.dropout,
        bos_token_id=sep_id,
        eos_token_id=sep_id,
        pad_token_id=sep_id,
    )
    if "rope_parameters" in inspect.signature(HFLlamaConfig.__init__).parameters:  # transformers >= 5
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": c.rope_theta}
    else:
        kwargs["rope_theta"] = c.rope_theta
    config = HFLlamaConfig(**kwargs)
    config.architectures = ["LlamaForCausalLM"]
    return config


def hf_state_dict(model: Llama) -> dict[str, torch.Tensor]:
    """Lumi `llama` parameter names -> LlamaForCausalLM's (same shapes and layouts)."""
    renames = {"embed.": "model.embed_tokens.", "norm.": "model.norm.", "lm_head.": "lm_head."}
    block = {
        "attn_norm.": "input_layernorm.",
        "mlp_norm.": "post_attention_layernorm.",
        "attn.": "self_attn.",
        "mlp.": "mlp.",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            prefix = next(p for p in block if rest.startswith(p))
            new = f"model.layers.{index}.{block[prefix]}{rest[len(prefix) :]}"
        else:
            top = next((p for p in renames if key.startswith(p)), None)
            if top is None:
                raise LumiError(f"parameter {key!r} has no LlamaForCausalLM equivalent")
            new = renames[top] + key[len(top) :]
        out[new] = value.detach().to(torch.float32).contiguous()
    return out


def write_tokenizer(tokenizer: Tokenizer, out: Path, max_length: int) -> None:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json for AutoTokenizer."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.processors import TemplateProcessing

    from lumi.data.tokenizers import BpeTokenizer, BytesTokenizer

    if isinstance(tokenizer, BytesTokenizer):
        hf = _byte_tokenizer()
    elif isinstance(tokenizer, BpeTokenizer):
        hf = HFTokenizer.from_str(json.dumps(tokenizer.definition, ensure_ascii=False))
    else:
        raise LumiError(f"tokenizer {tokenizer.spec!r} has no Hugging Face form to export")
    if hf.token_to_id(SEP) != tokenizer.sep_id:
        raise LumiError(
            f"the exported tokenizer puts {SEP} at id {hf.token_to_id(SEP)}, Lumi at {tokenizer.sep_id}"
        )
    # tokenizer(text) starts a document as Lumi does: [separator] + the text's ids.
    hf.post_processor = TemplateProcessing(
        single=f"{SEP} $A", pair=f"{SEP} $A {SEP} $B", special_tokens=[(SEP, tokenizer.sep_id)]
    )
    write_text_atomic(out / "tokenizer.json", hf.to_str(pretty=True))
    special = {"bos_token": SEP, "eos_token": SEP, "pad_token": SEP}
    write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special,
            "model_max_length": max_length,
            "clean_up_tokenization_spaces": False,
            "split_special_tokens": True,
            "add_prefix_space": False,
        },
    )
    write_json(out / "special_tokens_map.json", special)


def _byte_tokenizer() -> Any:
    """Lumi's `bytes` tokenizer in HF form: id b = byte b (ByteLevel alphabet, no merges), id 256 = separator."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    alphabet = _bytes_to_unicode()
    hf = HFTokenizer(models.BPE(vocab={alphabet[b]: b for b in range(256)}, merges=[]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(SEP, special=True, normalized=False)])
    return hf


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what the ByteLevel pre-tokenizer emits)."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard bars on stderr say nothing here
    hf_logging.set_verbosity_error()


def write_hf_model(model: Llama, tokenizer: Tokenizer, out: Path, max_positions: int) -> None:
    """config.json, generation_config.json, model.safetensors (through transformers) and the tokenizer."""
    from transformers import GenerationConfig, LlamaForCausalLM

    _quiet_transformers()

    config = hf_config(model.config, tokenizer.sep_id, max_positions)
    with torch.device("meta"):
        hf_model = LlamaForCausalLM(config)
    hf_model.load_state_dict(hf_state_dict(model), strict=False, assign=True)
    if config.tie_word_embeddings:
        hf_model.tie_weights()
    leftover = [n for n, p in hf_model.named_parameters() if p.is_meta]
    if leftover:
        raise LumiError(f"the conversion left LlamaForCausalLM parameters unset: {leftover[:3]}")
    hf_model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.sep_id, eos_token_id=tokenizer.sep_id, pad_token_id=tokenizer.sep_id
    )
    hf_model.save_pretrained(str(out), safe_serialization=True)
    write_tokenizer(tokenizer, out, max_positions)


def self_check(
    model: Llama, tokenizer: Tokenizer, out: Path, sample_text: str, seed: int = 0
) -> dict[str, Any]:
    """Load ``out`` with transformers and compare with Lumi: logits on a fixed batch, a greedy continuation,
    and the tokenizer's ids on ``sample_text``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lumi.generate import generate

    _quiet_transformers()
    hf_model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(str(out))
    model = model.eval()
    g = torch.Generator().manual_seed(seed)
    batch = torch.randint(0, model.config.vocab_size, (2, 64), generator=g)
    with torch.no_grad():
        diff = (model(batch) - hf_model(batch).logits).abs().max().item()
    ids = [tokenizer.sep_id, *tokenizer.encode(sample_text)][:32]
    # Both stop after a separator (HF's eos): the same rule on both sides.
    lumi_ids = generate(model, ids, 24, temperature=0, stop_ids=[tokenizer.sep_id])
    with torch.no_grad():
        hf_out = hf_model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
    hf_ids = hf_out[0, len(ids) :].tolist()
    tok_ids = hf_tok(sample_text)["input_ids"]
    return {
        "max_abs_logit_diff": diff,
        "logits_ok": diff <= PARITY_TOLERANCE,
        "greedy_tokens": len(lumi_ids),
        "greedy_match": lumi_ids == hf_ids,
        "tokenizer_match": tok_ids == [tokenizer.sep_id, *tokenizer.encode(sample_text)],
        "tokenizer_roundtrip": hf_tok.decode(tok_ids, skip_special_tokens=True) == sample_text,
    }
