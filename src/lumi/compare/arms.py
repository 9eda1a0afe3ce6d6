"""An arm of a comparison: a model (registry name, preset, config overrides, plugin files) with a label."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lumi.errors import LumiError, closest
from lumi.io import parse_assignment

ARM_FORMS = "MODEL[:PRESET][+FIELD=VALUE...] or LABEL=MODEL[:PRESET][+FIELD=VALUE...]"
ARM_KEYS = ("model", "preset", "overrides", "label", "files", "optim", "train", "tokenizer")
_LABEL_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass
class Arm:
    name: str
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # "" (not given): the arm's spec string, filled in at construction
    files: list[str] = field(default_factory=list)  # plugin files that register `name`
    optim: dict[str, Any] = field(
        default_factory=dict
    )  # per-arm optimizer settings (on top of the shared ones)
    train: dict[str, Any] = field(
        default_factory=dict
    )  # only to refuse it: pairing needs shared train settings
    tokenizer: str | None = None  # per-arm tokenizer (e.g. a BPE arm in a byte-level comparison)

    def __post_init__(self) -> None:
        if not self.label:
            self.label = self.spec()

    def spec(self) -> str:
        """The one-word form: llama:micro+mlp=relu2."""
        text = self.name + (f":{self.preset}" if self.preset else "")
        for key, value in self.overrides.items():
            text += f"+{key}={_format_value(value)}"
        return text

    @property
    def dirname(self) -> str:
        """Directory name under runs/: the label with ':' and '/' made filesystem-safe."""
        return self.label.replace(":", "-").replace("/", "_").replace(" ", "_")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "label": self.label,
            "model": self.name,
            "preset": self.preset,
            "overrides": dict(self.overrides),
            "files": list(self.files),
        }
        if self.optim:
            d["optim"] = dict(self.optim)
        if self.train:
            d["train"] = dict(self.train)
        if self.tokenizer:
            d["tokenizer"] = self.tokenizer
        return d


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_arm(text: str, label: str | None = None) -> Arm:
    """'llama:micro+mlp=relu2' or 'relu2=llama:micro+mlp=relu2' -> Arm."""
    text = str(text).strip()
    if not text:
        raise LumiError(f"an arm is empty; arms look like {ARM_FORMS}")
    head, _, _ = text.partition("+")
    if "=" in head:  # LABEL=MODEL...: the label comes before the first '+'
        given, _, text = text.partition("=")
        if label is None:
            label = given.strip()
    model, *parts = text.split("+")
    name, _, preset = model.partition(":")
    if not name:
        raise LumiError(f"arm {text!r} has no model name; arms look like {ARM_FORMS}")
    overrides: dict[str, Any] = {}
    for part in parts:
        try:
            key, value = parse_assignment(part, "FIELD=VALUE (e.g. llama:micro+mlp=relu2)")
        except LumiError as e:
            raise LumiError(f"arm {text!r}: {e}") from None
        overrides[key] = value
    if label is not None:
        _check_label(label, text)
    return Arm(name=name.strip(), preset=preset.strip() or None, overrides=overrides, label=label or "")


def _check_label(label: str, where: str) -> None:
    if not _LABEL_RE.match(label):
        raise LumiError(
            f"arm {where!r}: label {label!r} may only hold letters, digits, '_', '-', '.' "
            f"(no ':', '+', '/' or spaces)"
        )


def arm_from_mapping(d: dict[str, Any], where: str) -> Arm:
    """A YAML arm: {model: llama:micro, preset: ..., overrides: {...}, label: ..., files: [...], optim: {...}}."""
    for key in d:
        if key not in ARM_KEYS:
            raise LumiError(
                f"{where}: unknown arm key {key!r}{closest(str(key), list(ARM_KEYS))}; "
                f"arm keys: {', '.join(ARM_KEYS)}"
            )
    if not d.get("model"):
        raise LumiError(f"{where}: an arm needs a 'model' (e.g. model: llama:micro)")
    arm = parse_arm(str(d["model"]))
    if d.get("preset") is not None:
        if arm.preset is not None and arm.preset != str(d["preset"]):
            raise LumiError(
                f"{where}: preset given twice ({arm.preset!r} in model, {d['preset']!r} in preset)"
            )
        arm.preset = str(d["preset"])
    for key in ("overrides", "optim", "train"):
        value = d.get(key) or {}
        if not isinstance(value, dict):
            raise LumiError(f"{where}: arm key {key!r} must be a mapping (field: value), got {value!r}")
        getattr(arm, key).update(value)
    files = d.get("files") or []
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list):
        raise LumiError(f"{where}: arm key 'files' must be a list of .py files, got {files!r}")
    arm.files = [str(f) for f in files]
    if d.get("tokenizer") is not None:
        arm.tokenizer = str(d["tokenizer"])
    arm.label = str(d["label"]) if d.get("label") is not None else arm.spec()
    if d.get("label") is not None:
        _check_label(arm.label, str(d["model"]))
    return arm
