"""Keyterms: the words and phrases a request or a stream asks the model to favour (names, products, account codes).

Parsed and bounded here, where every API (form fields, stream messages, Realtime sessions, Deepgram's ``keyterm``)
meets them; applied in the model by NeMo's boosting tree (``speech/biasing.py``). A ``Keyterms`` is hashable: the
Transcriber keys its trees on it, so a term set's tree is built once and reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .errors import KeytermError
from .settings import KeytermSettings


@dataclass(frozen=True)
class Keyterms:
    terms: tuple[str, ...]  # each stripped, inner whitespace single, duplicates dropped (first kept)
    boost: float


def parse_keyterms(terms: Iterable[str] | None, boost: float | str | None, settings: KeytermSettings
                   ) -> Keyterms | None:
    """The request's terms and boost, checked against the limits: ``None`` when there are no terms (a boost alone
    changes nothing). Every problem is a 400 that names the term or the limit."""
    cleaned: dict[str, None] = {}
    for index, term in enumerate(terms or []):
        if not isinstance(term, str):
            raise KeytermError(f"keyterms[{index}] must be a string, got {type(term).__name__}.")
        text = " ".join(term.split())
        if not text:
            raise KeytermError(f"keyterms[{index}] is empty; send words or phrases.")
        if len(text) > settings.max_term_chars:
            raise KeytermError(f"The keyterm {text[:60]!r} has {len(text)} characters; the limit is "
                               f"{settings.max_term_chars}.")
        cleaned.setdefault(text, None)
    if len(cleaned) > settings.max_terms:
        raise KeytermError(f"{len(cleaned)} keyterms sent; the limit is {settings.max_terms}.")
    weight = _boost(boost, settings)
    return Keyterms(tuple(cleaned), weight) if cleaned else None


def _boost(boost: float | str | None, settings: KeytermSettings) -> float:
    if boost is None or boost == "":
        return settings.boost
    try:
        value = float(boost)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0 < value <= settings.max_boost:  # (NaN fails too)
        raise KeytermError(f"keyterms_boost must be a number in (0, {settings.max_boost:g}]; got {boost!r}.",
                           param="keyterms_boost")
    return value
