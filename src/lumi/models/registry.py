"""Name -> architecture registry, presets, and user plugins (``--model-file``).

Plugins are imported only from paths the user names on the command line (or passes to the Python
API). A run directory records which plugin files its model needs (config.yaml ``model.files``,
with content hashes in its checkpoints), but Lumi never imports a file because a run directory
names it: ``require_model_files`` checks that the user has passed each one, else says which.

Registering an architecture is one decorator on its class::

    @register("llama", presets={"nano": dict(n_layers=2, d_model=64, n_heads=2)},
              description="Decoder-only Transformer baseline")
    class Llama(LumiModel[LlamaConfig]):
        config_class = LlamaConfig
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lumi.errors import LumiError, closest
from lumi.io import coerce
from lumi.models.base import LumiModel, ModelConfig


@dataclass
class ModelSpec:
    name: str
    cls: type[LumiModel[Any]]
    description: str
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Presets cheap enough to run `lumi check` on 2 CPU cores (the test suite runs them all).
    cpu_presets: tuple[str, ...] = ()
    source: str = "lumi"  # "lumi" or the plugin file that registered it

    @property
    def config_class(self) -> type[ModelConfig]:
        return self.cls.config_class


ModelT = TypeVar("ModelT", bound="LumiModel[Any]")

_REGISTRY: dict[str, ModelSpec] = {}
_BUILTINS_LOADED = False

# Modules that register the built-in zoo. Adding an architecture = one file + one line here.
BUILTIN_MODULES: list[str] = [
    "lumi.models.llama",
    "lumi.models.bytepatch",
    "lumi.models.spacebyte",
    "lumi.models.bltpatch",
    "lumi.models.multiscale",
    "lumi.models.mla",
    "lumi.models.recurrent",
    "lumi.models.lowrank",
    "lumi.models.vocabspace",
    "lumi.models.ut_act",
    "lumi.models.pause",
    "lumi.models.moe",
]


def register(
    name: str,
    *,
    description: str,
    presets: dict[str, dict[str, Any]] | None = None,
    cpu_presets: tuple[str, ...] | list[str] | None = None,
) -> Callable[[type[ModelT]], type[ModelT]]:
    """Class decorator registering a model under ``name``."""

    def wrap(cls: type[ModelT]) -> type[ModelT]:
        if not (isinstance(cls, type) and issubclass(cls, LumiModel)):
            raise TypeError(f"@register({name!r}) must decorate a LumiModel subclass")
        if not dataclasses.is_dataclass(cls.config_class):
            raise TypeError(f"{cls.__name__}.config_class must be a dataclass")
        source = _CURRENT_PLUGIN[-1] if _CURRENT_PLUGIN else "lumi"
        _REGISTRY[name] = ModelSpec(
            name=name,
            cls=cls,
            description=description,
            presets=dict(presets or {}),
            cpu_presets=tuple(cpu_presets if cpu_presets is not None else ()),
            source=source,
        )
        return cls

    return wrap


_CURRENT_PLUGIN: list[str] = []
_LOADED_FILES: dict[str, str] = {}  # resolved path -> sha256 of every plugin file imported in this process
_FILE_NAMES: dict[str, list[str]] = {}  # resolved path -> the model names that file registered


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)


def load_model_file(path: str | Path) -> list[str]:
    """Import a user's Python file so its ``@register`` calls run; returns the names it registers.

    Each file runs once per process (keyed by its resolved path): asking again returns the same names,
    unless the file's content changed since, when it runs again."""
    p = Path(path)
    if not p.is_file():
        raise LumiError(
            f"model file {str(p)!r} does not exist (expected a .py file that calls lumi.register)"
        )
    resolved = str(p.resolve())
    names = _FILE_NAMES.get(resolved)
    if names and all(n in _REGISTRY for n in names) and _LOADED_FILES.get(resolved) == file_sha256(p):
        return list(names)
    _load_builtins()
    before = set(_REGISTRY)
    mod_name = f"lumi_plugin_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:
        raise LumiError(f"model file {str(p)!r} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    _CURRENT_PLUGIN.append(str(p))
    try:
        spec.loader.exec_module(module)
    except LumiError:
        raise
    except Exception as e:  # the user's code failed: say which file and why
        raise LumiError(f"model file {str(p)!r} raised on import: {type(e).__name__}: {e}") from e
    finally:
        _CURRENT_PLUGIN.pop()
    _LOADED_FILES[resolved] = file_sha256(p)
    new = set(_REGISTRY) - before
    reregistered = {n for n, s in _REGISTRY.items() if s.source == str(p)}
    _FILE_NAMES[resolved] = sorted(new | reregistered)
    return list(_FILE_NAMES[resolved])


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def model_file_hashes(files: list[str]) -> dict[str, str | None]:
    """{resolved path: sha256} of plugin files (None for one that cannot be read here)."""
    out: dict[str, str | None] = {}
    for f in files:
        p = Path(str(f)).expanduser()
        try:
            out[str(p.resolve())] = file_sha256(p)
        except OSError:
            out[str(p.resolve())] = None
    return out


def require_model_files(
    recorded: list[str], hashes: dict[str, str | None] | None, run: str | Path, model: str
) -> None:
    """LumiError unless every plugin file a run recorded was imported from the command line in this process.

    A recorded file counts as passed when a loaded file has its resolved path or its content (sha256 from
    ``hashes``, e.g. the checkpoint's record, else of the recorded path when it is readable here; only
    when neither is known, its file name). The same path with other content is a mismatch: the plugin
    changed since the run was trained. Nothing recorded is ever imported here.
    """
    hashes = dict(hashes or {})
    loaded_hashes = set(_LOADED_FILES.values())
    missing: list[str] = []
    for f in recorded:
        path = str(Path(str(f)).expanduser().resolve())
        want = hashes.get(path) or hashes.get(str(f))
        if path in _LOADED_FILES:
            if want and _LOADED_FILES[path] != want:
                raise LumiError(
                    f"plugin file {path!r} changed since run {str(run)!r} was trained (sha256 "
                    f"{_LOADED_FILES[path][:12]} != recorded {want[:12]}); restore the file it was "
                    f"trained with, or start a new run"
                )
            continue
        if want is None:
            try:
                want = file_sha256(path)  # reading is safe; importing a run's file is what we never do
            except OSError:
                want = None
        if want is not None:
            if want in loaded_hashes:
                continue
        elif any(Path(p).name == Path(path).name for p in _LOADED_FILES):
            continue
        missing.append(str(f))
    if missing:
        flags = " ".join(f"--model-file {m}" for m in missing)
        raise LumiError(
            f"run {str(run)!r} uses model {model!r} from plugin file(s) {', '.join(missing)}, which "
            f"were not passed on this command line: pass {flags} (with the file's path here); Lumi "
            f"does not import code named inside a run directory"
        )


def list_models() -> list[ModelSpec]:
    _load_builtins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_spec(name: str) -> ModelSpec:
    _load_builtins()
    if name not in _REGISTRY:
        names = sorted(_REGISTRY)
        raise LumiError(
            f"unknown model {name!r}{closest(name, names)}; registered models: {', '.join(names)}"
        )
    return _REGISTRY[name]


def make_config(
    name: str,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    vocab_size: int | None = None,
) -> ModelConfig:
    """Resolve preset + overrides (+ the tokenizer's vocab size) into a validated config."""
    spec = get_spec(name)
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in spec.presets:
            choices = sorted(spec.presets)
            raise LumiError(
                f"unknown preset {preset!r} for model {name!r}{closest(preset, choices)}; "
                f"presets: {', '.join(choices) or '(none)'}"
            )
        values.update(spec.presets[preset])
    if vocab_size is not None:
        values["vocab_size"] = vocab_size
    values.update(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(spec.config_class)}
    for key in values:
        if key not in fields:
            raise LumiError(
                f"unknown config field {key!r} for model {name!r}{closest(key, list(fields))}; "
                f"fields: {', '.join(sorted(fields))}"
            )
    types = _field_types(spec.config_class)
    values = {
        k: coerce(v, types[k], f"config field {k!r} of model {name!r}") if k in types else v
        for k, v in values.items()
    }
    config = spec.config_class(**values)
    config.validate()
    return config


def build_model(
    name: str,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    vocab_size: int | None = None,
) -> LumiModel:
    spec = get_spec(name)
    config = make_config(name, preset, overrides, vocab_size)
    return spec.cls(config)


def model_from_config(name: str, config_values: dict[str, Any]) -> LumiModel:
    """Rebuild a model from a saved, fully resolved config dict (e.g. a run's config.yaml)."""
    return build_model(name, None, config_values)


def _field_types(config_class: type) -> dict[str, Any]:
    """Declared field types of a config dataclass; a plugin's annotation that does not resolve is left as
    written (its values then pass through unconverted)."""
    try:
        return typing.get_type_hints(config_class)
    except Exception:  # e.g. a NameError from a plugin's forward reference
        return {}
