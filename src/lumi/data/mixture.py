"""Corpus mixtures: "shakespeare:0.7,pystdlib:0.3" (or a YAML list of {name, weight}).

Each corpus keeps its own deterministic document split; one tokenizer is trained on the union of the
training splits; training batches pick each sequence's corpus by weight (lumi.train.batches);
validation reports BPB per corpus and the byte-weighted total (lumi.metrics.evaluate).

A spec is a mixture when one of its comma-separated items ends in ":NUMBER" or names a built-in corpus
followed by ":"; then every item must be NAME:WEIGHT with a positive, finite weight. A mixture of one
corpus is just that corpus. Corpus specs that hold commas themselves (files:a,b) go in the YAML list.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from lumi.errors import LumiError

_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*|\s*[-+]?(inf|nan)\s*", re.IGNORECASE)


@dataclass(frozen=True)
class MixtureItem:
    name: str  # a corpus spec accepted by load_corpus
    weight: float  # > 0; sampling probability = weight / sum of weights

    def __str__(self) -> str:
        return f"{self.name}:{self.weight:g}"


def mixture_spec(items: list[MixtureItem]) -> str:
    """The canonical spec: 'a:0.7,b:0.3' (names stripped, weights as %g)."""
    return ",".join(str(item) for item in items)


def parse_mixture(spec: str) -> list[MixtureItem] | None:
    """The items of a mixture spec (two or more corpora), or None when ``spec`` names one corpus.

    LumiError (one line) for a weight that does not parse, is not positive or finite, an item without
    a weight, or a corpus named twice.
    """
    from lumi.data.corpora import BUILTIN

    text = str(spec).strip()
    parts = [p.strip() for p in text.split(",")]
    weighted = [
        ":" in p and (_NUMBER.fullmatch(p.rsplit(":", 1)[1]) is not None or p.rsplit(":", 1)[0] in BUILTIN)
        for p in parts
    ]
    if not any(weighted):
        return None
    items = [_item(p, spec) for p in parts]
    _check_unique(items, f"corpus mixture {spec!r}")
    return items if len(items) > 1 else None


def single_corpus(spec: str) -> str:
    """``spec`` without a weight when it is a one-corpus 'mixture' ('shakespeare:1' -> 'shakespeare')."""
    text = str(spec).strip()
    if parse_mixture(text) is None and ":" in text:
        name, weight = text.rsplit(":", 1)
        from lumi.data.corpora import BUILTIN

        if _NUMBER.fullmatch(weight) or name.strip() in BUILTIN:
            return _item(text, spec).name
    return text


def corpus_list_to_spec(value: Any, where: str) -> str:
    """A YAML list ``[{name: shakespeare, weight: 0.7}, {name: pystdlib, weight: 0.3}]`` as a spec."""
    if not isinstance(value, list) or not value:
        raise LumiError(f"{where}: a corpus list must be a non-empty list of {{name, weight}} mappings")
    items = []
    for n, entry in enumerate(value):
        if not isinstance(entry, dict) or set(entry) - {"name", "weight"} or "name" not in entry:
            raise LumiError(
                f"{where}[{n}]: expected a mapping with 'name' and 'weight' (e.g. {{name: shakespeare, "
                f"weight: 0.7}}), got {entry!r}"
            )
        items.append(
            MixtureItem(str(entry["name"]).strip(), _weight(entry.get("weight", 1.0), entry["name"], where))
        )
    _check_unique(items, where)
    return mixture_spec(items) if len(items) > 1 else items[0].name


def _item(part: str, spec: str) -> MixtureItem:
    if ":" not in part:
        raise LumiError(
            f"corpus mixture {spec!r}: {part!r} has no weight; write every item as NAME:WEIGHT, "
            "e.g. shakespeare:0.7,pystdlib:0.3"
        )
    name, weight = (s.strip() for s in part.rsplit(":", 1))
    if not name:
        raise LumiError(f"corpus mixture {spec!r}: {part!r} has no corpus name")
    return MixtureItem(name, _weight(weight, name, f"corpus mixture {spec!r}"))


def _weight(value: Any, name: Any, where: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        weight = float(value)
    except (TypeError, ValueError):
        raise LumiError(f"{where}: the weight of {name!r} is {value!r}, not a number") from None
    if not math.isfinite(weight) or weight <= 0:
        raise LumiError(f"{where}: the weight of {name!r} must be a positive number, got {value!r}")
    return weight


def _check_unique(items: list[MixtureItem], where: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise LumiError(f"{where}: corpus {item.name!r} is named twice; give each corpus once")
        seen.add(item.name)
