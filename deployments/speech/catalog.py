"""The models the service serves, by id: which one a request gets, and which languages it may ask for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .errors import InvalidRequest, NotFound
from .keyterms import Keyterms, parse_keyterms
from .settings import KeytermSettings, ModelSpec

# names clients send instead of ISO-639-1 codes (OpenAI accepts codes; older clients of ours sent "english")
LANGUAGE_NAMES = {"english": "en", "german": "de", "french": "fr", "spanish": "es", "italian": "it",
                  "portuguese": "pt", "dutch": "nl", "polish": "pl", "russian": "ru", "ukrainian": "uk"}
MULTILINGUAL = "auto"  # reported for a several-language model when the request named none


@dataclass(frozen=True)
class Choice:
    """What a request or stream is transcribed with: the model, the language reported, the terms boosted."""

    model: ModelSpec
    language: str  # what verbose_json reports
    keyterms: Keyterms | None = None


class ModelCatalog:
    def __init__(self, models: list[ModelSpec], aliases: dict[str, str] | None = None,
                 keyterms: KeytermSettings | None = None):
        self.models = {spec.id: spec for spec in models}
        self.default = models[0]
        self.aliases = dict(aliases or {})  # a name clients send -> a served id ("": the default)
        self.keyterm_limits = keyterms or KeytermSettings()

    def resolve(self, model: str | None) -> ModelSpec:
        """The request's ``model`` (empty: the default; an alias: its model) -> its spec; anything else is a 404
        naming the served ones."""
        if not model:
            return self.default
        name = model.strip()
        if name not in self.models and name in self.aliases:
            name = self.aliases[name] or self.default.id
        spec = self.models.get(name)
        if spec is None:
            raise NotFound(f"The model {model!r} is not served here; served models: {', '.join(self.models)}.",
                           code="model_not_found")
        return spec

    def choose(self, model: str | None, language: str | None, keyterms: Iterable[str] | None = None,
               keyterms_boost: float | str | None = None) -> Choice:
        """The model, the language to report (the one asked for, which the model must transcribe, else the
        model's only language, else ``auto``: a multilingual Parakeet transcribes the language it hears and does
        not say which) and the keyterms, within their limits (whether the model can spell them is the
        Transcriber's to say: ``TranscriptionPipeline.checked``)."""
        spec = self.resolve(model)
        boosted = self.keyterms(keyterms, keyterms_boost)
        asked = (language or "").strip().lower()
        if not asked:
            return Choice(spec, spec.languages[0] if len(spec.languages) == 1 else MULTILINGUAL, boosted)
        code = LANGUAGE_NAMES.get(asked, asked)
        if code not in spec.languages:
            raise InvalidRequest(f"language {language!r} is not supported by {spec.id}; it transcribes: "
                                 f"{', '.join(spec.languages)}.", code="unsupported_language")
        return Choice(spec, code, boosted)

    def keyterms(self, terms: Iterable[str] | None, boost: float | str | None) -> Keyterms | None:
        """Terms within this service's limits (``keyterms.*``); ``None`` for none."""
        return parse_keyterms(terms, boost, self.keyterm_limits)

    def listing(self) -> dict:
        """``GET /v1/models`` (OpenAI's list format)."""
        return {"object": "list", "data": [{"id": spec.id, "object": "model", "created": 0, "owned_by": "nvidia",
                                            "root": spec.source, "languages": spec.languages}
                                           for spec in self.models.values()]}
