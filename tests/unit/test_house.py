"""The house rules that a reader relies on, checked over the source: each shared fact has one home."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "deployments").rglob("*.py"))


def lines_matching(pattern: str, files: list[Path], allowed: set[str]) -> list[str]:
    found = []
    for path in files:
        relative = str(path.relative_to(ROOT))
        if relative in allowed:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(pattern, line.split("#")[0]):
                found.append(f"{relative}:{number}: {line.strip()}")
    return found


def test_the_sample_rate_is_written_once():
    """16 kHz is defined in parakeet_defaults; the list of PCM rates a Realtime client may declare is a list of
    rates, not the model's."""
    stray = lines_matching(r"\b16_?000\b(?!,\s*22050)", SHIPPED + sorted((ROOT / "bench").glob("*.py")),
                           {"deployments/speech/parakeet_defaults.py"})
    assert not stray, "use parakeet_defaults.SAMPLE_RATE:\n" + "\n".join(stray)


def test_every_client_error_is_defined_in_the_errors_module():
    """A reader looks for what a client can be told in one place: every ApiError subclass lives in speech/errors.py."""
    import deployments.speech.errors as errors

    stray = lines_matching(r"^class \w+\((ApiError|" + "|".join(
        name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, errors.ApiError))
        + r")\)", SHIPPED, {"deployments/speech/errors.py"})
    assert not stray, "define it in deployments/speech/errors.py:\n" + "\n".join(stray)


def test_every_series_is_defined_in_the_metrics_module():
    """metrics.py's docstring says every series is defined there (and the Grafana test reads them from there)."""
    stray = lines_matching(r"\b(Counter|Histogram|Gauge)\(", SHIPPED, {"deployments/metrics.py"})
    assert not stray, "define the series in deployments/metrics.py:\n" + "\n".join(stray)


def test_the_stream_refusal_is_written_once():
    stray = lines_matching(r"Too many concurrent streams", SHIPPED, set())
    assert len(stray) == 1 and "stream_connection.py" in stray[0], "\n".join(stray)


def test_pcm16_is_decoded_in_one_place():
    stray = lines_matching(r"frombuffer\(.*(<i2|int16)", SHIPPED, {"deployments/speech/audio.py"})
    assert not stray, "use audio.pcm16_to_float:\n" + "\n".join(stray)


def test_the_openapi_document_is_valid_and_describes_every_body():
    """Client generators and the schema fuzzer read /openapi.json: it validates, every error response points at
    the one ErrorResponse schema, and the transcription's 200 describes each format's body."""
    from openapi_spec_validator import validate

    from deployments.ingress import api

    document = api.openapi()
    validate(document)
    operations = [op for path in document["paths"].values() for op in path.values()]
    errors = [response for op in operations for status, response in op["responses"].items()
              if status[0] in "45" and "content" in response]
    assert errors and all(r["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
                          for r in errors)
    ok = document["paths"]["/v1/audio/transcriptions"]["post"]["responses"]["200"]["content"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in ok["application/json"]["schema"]["anyOf"]} == {
        "TranscriptionJson", "TranscriptionResult"}
    assert all(ok[kind]["schema"] == {"type": "string"} for kind in ("text/plain", "text/vtt", "text/event-stream"))
    assert {"ErrorResponse", "TranscriptionJson", "TranscriptionResult", "Word", "Segment"} <= set(
        document["components"]["schemas"])


def test_realtime_server_events_are_typed():
    """The Realtime connection sends pydantic events (speech/realtime_events.py), never hand-built dicts."""
    connection = ROOT / "deployments" / "protocols" / "realtime_connection.py"
    stray = lines_matching(r"""\{\s*["']type["']\s*:""", [connection], set())
    assert not stray, "use a realtime_events model:\n" + "\n".join(stray)


def test_the_shipped_package_imports_nothing_that_does_not_ship():
    """`deployments` is what the package installs; bench/, tests/ and tools/ do not ship."""
    stray = lines_matching(r"^\s*(from|import)\s+(bench|tests|tools)\b", SHIPPED, set())
    assert not stray, "\n".join(stray)


def test_test_modules_share_helpers_and_one_app_factory():
    """Shared test code lives in tests/helpers.py (no test module imports another), and every module that serves an
    app of its own does it through conftest's ``module_app`` (named after the module, so modules pass in any order)."""
    tests = sorted((ROOT / "tests").rglob("test_*.py"))
    imports = lines_matching(r"^\s*from tests\.(unit|integration)\b", tests, set())
    assert not imports, "move it to tests/helpers.py:\n" + "\n".join(imports)
    own_apps = lines_matching(r"\brun_app\(", tests, set())
    assert not own_apps, "use the module_app fixture:\n" + "\n".join(own_apps)


def test_three_layers():
    """The layout shows the layers: the Ray-free core (``deployments/speech``: neither Ray nor a web framework),
    the protocol adapters (``deployments/protocols``: FastAPI / WebSockets, no Ray), and the Ray deployments at the
    top, where only the Ingress touches the web framework (it serves the adapters' routes)."""
    def importing(pattern: str, files) -> list[str]:
        return [str(f.relative_to(ROOT)) for f in files
                if re.search(rf"^\s*(import|from) ({pattern})\b", f.read_text(), re.MULTILINE)]

    core = sorted((ROOT / "deployments" / "speech").glob("*.py"))
    protocols = sorted((ROOT / "deployments" / "protocols").glob("*.py"))
    top = sorted((ROOT / "deployments").glob("*.py"))
    assert core and protocols and top
    assert not importing("ray|fastapi|starlette", core)
    assert not importing("ray", protocols)
    assert importing("fastapi|starlette", top) == ["deployments/ingress.py"]
