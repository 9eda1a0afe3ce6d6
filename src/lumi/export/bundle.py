"""`lumi export --format lumi`: a self-contained directory any Lumi model (plugins included) loads from.

    DIR/model.safetensors    weights (fp32, Lumi's parameter names)
    DIR/model_config.json    the resolved model config (model_from_config(name, this) rebuilds the model)
    DIR/lumi_tokenizer.json  the tokenizer (+ tokenizer.json for BPE)
    DIR/lumi_export.json     manifest: model name, tokenizer, the run it came from, the BPB it reached

``lumi.load(DIR)`` returns (model, tokenizer) without the run directory. A plugin architecture needs its
file again (``model_files``); the manifest records its sha256, checked before the weights are loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lumi.errors import LumiError
from lumi.io import read_json, write_directory, write_json

if TYPE_CHECKING:
    import torch

    from lumi.data.tokenizers import Tokenizer
    from lumi.models.base import LumiModel
    from lumi.run import Run

MANIFEST = "lumi_export.json"
FORMAT = "lumi-export"


def run_facts(run: Run, ckpt: Path) -> dict[str, Any]:
    """Where an exported model came from and the validation BPB it reached (as its run measured it)."""
    summary = run.summary() or {}
    state = run.checkpoint_state(ckpt)
    return {
        "run": str(run.path),
        "checkpoint": str(ckpt),
        "step": state.get("step"),
        "tokens": state.get("tokens"),
        "val_bpb": summary.get("final_val_bpb"),
        "val_protocol": summary.get("final_val_protocol"),
        "model_files": state.get("model_files") or {},
    }


def write_bundle(
    out: Path, name: str, model: LumiModel, tokenizer: Tokenizer, facts: dict[str, Any], force: bool = False
) -> None:
    """Write a lumi-format directory for ``model`` (atomically; see lumi.io.write_directory)."""
    from lumi import __version__
    from lumi.train.checkpoint import save_model_files

    def fill(tmp: Path) -> None:
        save_model_files(tmp, model)
        tokenizer.save(tmp)
        counts = model.param_counts()
        manifest = {
            "format": FORMAT,
            "version": 1,
            "lumi_version": __version__,
            "model": name,
            "params": counts.total,
            "tokenizer": tokenizer.spec,
            "vocab_size": tokenizer.vocab_size,
            **facts,
        }
        write_json(tmp / MANIFEST, manifest)

    write_directory(out, fill, force, "export directory")


def load(
    directory: str | Path, device: str | torch.device = "cpu", model_files: Sequence[str | Path] = ()
) -> tuple[LumiModel, Tokenizer]:
    """(model, tokenizer) from a directory written by `lumi export --format lumi` or `lumi unpack`."""
    from lumi.data.tokenizers import load_tokenizer
    from lumi.models.registry import load_model_file, model_from_config, require_model_files
    from lumi.train.checkpoint import load_model_config, load_model_weights

    d = Path(directory)
    manifest = read_json(d / MANIFEST, "export manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LumiError(f"{d / MANIFEST} is not a Lumi export manifest (format {FORMAT!r})")
    name = str(manifest.get("model"))
    for f in model_files:
        load_model_file(f)
    hashes = manifest.get("model_files") or {}
    require_model_files(list(hashes), hashes, d, name)
    values = load_model_config(d)
    model = model_from_config(name, values)
    load_model_weights(d, model, device)
    tokenizer = load_tokenizer(d)
    if tokenizer.vocab_size != int(values.get("vocab_size", -1)):
        raise LumiError(
            f"{d}: the tokenizer has {tokenizer.vocab_size} ids but the model was built for vocab_size "
            f"{values.get('vocab_size')}"
        )
    return model.to(device).eval(), tokenizer
