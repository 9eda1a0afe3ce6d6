"""The adapter directory `lumi adapt` writes, and how other verbs load the adapted model from it.

    OUT/                      (default RUN/adapters/<method>-<corpus>-<time>/)
      results.json            every seed's numbers, the gate and the settings
      report.md               the same as tables
      seed-<k>/               one adapter per seed: what `lumi eval` / `lumi generate` accept
        adapter.safetensors   the trained tensors only (full: every weight), by parameter name
        adapter_config.json   core run, the sha256 of the core's weights, method, rank, targets, sizes
      merged-seed-<k>/        with --merge (lora, full): a normal run directory with the adapter folded in

An adapter refers to its core run by path and pins the core's weights by content hash: when the run has
trained on since, loading refuses instead of stacking the adapter on other weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lumi.errors import LumiError
from lumi.io import read_json, write_bytes_atomic, write_directory, write_json

if TYPE_CHECKING:
    from lumi.data.tokenizers import Tokenizer
    from lumi.evals.corpus import TextStream
    from lumi.models.base import LumiModel
    from lumi.run import Run

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
RESULTS = "results.json"
REPORT = "report.md"
FORMAT = "lumi-adapter-v1"


def seed_dir_name(seed: int) -> str:
    return f"seed-{seed}"


def merged_dir_name(seed: int) -> str:
    return f"merged-seed-{seed}"


def weights_sha256(model: torch.nn.Module) -> str:
    """Content hash of a model's weights (names, dtypes, shapes, bytes), independent of the file they came from."""
    digest = hashlib.sha256(b"lumi-weights-v1\n")
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}\t{t.dtype}\t{tuple(t.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def write_adapter(path: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, Any]:
    """One seed's adapter directory, written whole (``io.write_directory``); returns the config with sizes."""
    from safetensors.torch import save

    blob = save({n: t.detach().to("cpu").contiguous() for n, t in tensors.items()})
    config = {
        **config,
        "format": FORMAT,
        "trainable_params": sum(t.numel() for t in tensors.values()),
        "adapter_bytes": len(blob),
    }

    def fill(tmp: Path) -> None:
        write_bytes_atomic(tmp / ADAPTER_WEIGHTS, blob)
        write_json(tmp / ADAPTER_CONFIG, config)

    write_directory(path, fill, what="adapter directory")
    return config


class AdapterDirectory:
    """One seed's adapter (``seed-<k>/``): its config, its core run, and the adapted model."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.eval_dir = path / "eval"  # lumi eval's results of the adapted model
        raw = read_json(path / ADAPTER_CONFIG, "adapter config")
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise LumiError(f"{path / ADAPTER_CONFIG} is not a lumi adapt adapter config ({FORMAT})")
        self.config: dict[str, Any] = raw

    @classmethod
    def find(cls, path: str | Path) -> AdapterDirectory | None:
        """The adapter at ``path`` (a seed directory, or an output directory holding exactly one seed);
        None when ``path`` is no adapter directory at all."""
        p = Path(path)
        if (p / ADAPTER_CONFIG).is_file():
            return cls(p)
        if not (p / RESULTS).is_file():
            return None
        seeds = sorted(d for d in p.glob("seed-*") if (d / ADAPTER_CONFIG).is_file())
        if len(seeds) == 1:
            return cls(seeds[0])
        if not seeds:
            return None
        raise LumiError(
            f"{str(p)!r} holds the adapters of {len(seeds)} seeds; give one of them: "
            + ", ".join(str(s) for s in seeds[:4])
        )

    def core(self) -> Run:
        from lumi.run import Run

        core = Path(str(self.config.get("core_run", "")))
        if not Run.is_run(core):
            raise LumiError(
                f"the core run {str(core)!r} named in {self.path / ADAPTER_CONFIG} is not a run directory "
                "(moved or deleted?); the adapter only makes sense on top of it"
            )
        return Run(core)

    def load_model(
        self, device: str | torch.device = "cpu", model_files: list[str] | None = None
    ) -> LumiModel:
        """The core's model with this adapter attached and loaded, in eval mode on ``device``."""
        from safetensors.torch import load_file

        from lumi.adapt.methods import attach, load_trainable_state

        c = self.config
        run = self.core()
        model = run.load_model(device, model_files or [])
        if weights_sha256(model) != c.get("core_weights_sha256"):
            raise LumiError(
                f"the core run {str(run.path)!r} no longer has the weights this adapter was trained on (its "
                f"latest checkpoint changed since `lumi adapt`); adapt again"
            )
        attach(
            model, c["method"], int(c.get("rank") or 1), c.get("alpha"), list(c.get("modules") or []) or None
        )
        weights = self.path / ADAPTER_WEIGHTS
        try:
            state = load_file(str(weights), device=str(device))
        except Exception as e:
            raise LumiError(f"adapter weights {weights} are unreadable: {type(e).__name__}: {e}") from None
        load_trainable_state(model, state, str(weights))
        return model.to(device).eval()

    def load_model_and_tokenizer(
        self, device: str | torch.device = "cpu", model_files: list[str] | None = None
    ) -> tuple[LumiModel, Tokenizer]:
        return self.load_model(device, model_files), self.core().tokenizer()

    def corpus_stream(self, spec: str, tokenizer: Tokenizer) -> TextStream:
        """What `lumi eval ADAPTER --corpus SPEC` scores: the adapter's own domain on its validation split
        only (its training documents would flatter it), any other corpus as for the core run."""
        from lumi.evals.corpus import corpus_stream

        if spec.strip() == str(self.config.get("domain", "")).strip():
            from lumi.adapt.domain import domain_data

            return domain_data(spec, tokenizer).val
        return corpus_stream(spec, tokenizer, self.core())

    def describe(self) -> dict[str, Any]:
        keys = ("method", "rank", "domain", "seed", "trainable_params", "adapter_bytes")
        return {"path": str(self.path), **{k: self.config.get(k) for k in keys}}


def load_model_or_adapter(
    path: str | Path, device: str | torch.device = "cpu", model_files: list[str] | None = None
) -> tuple[LumiModel, Tokenizer]:
    """(model, tokenizer) of an adapter directory, else of a run (``lumi.run.load_run_model``)."""
    from lumi.run import load_run_model

    adapter = AdapterDirectory.find(path)
    if adapter is not None:
        return adapter.load_model_and_tokenizer(device, model_files)
    return load_run_model(path, device, model_files or [])


def write_merged_run(path: Path, core: Run, model: LumiModel, adapter_config: dict[str, Any]) -> None:
    """A normal run directory (config, checkpoint, summary) whose weights have the adapter folded in:
    `lumi eval`, `generate`, `export` and `pack` read it like any run. Written whole or not at all."""
    from lumi.run import Run
    from lumi.train.checkpoint import save_checkpoint

    config = copy.deepcopy(core.config)
    config.name = path.name
    state = {**core.checkpoint_state(), "merged_adapter": adapter_config}
    counts = model.param_counts()

    def fill(tmp: Path) -> None:
        run = Run(tmp)
        run.write_config(config)
        save_checkpoint(run.checkpoints_dir, model, {}, json.loads(json.dumps(state, default=str)))
        run.write_summary(
            {
                "run_dir": str(path),
                "model": config.model.name,
                "status": "completed",
                "params": counts.total,
                "non_embedding_params": counts.non_embedding,
                "steps": state.get("step"),
                "tokens": state.get("tokens"),
                "merged_from": {"core_run": str(core.path), **adapter_config},
            }
        )

    write_directory(path, fill, what="merged run directory")
