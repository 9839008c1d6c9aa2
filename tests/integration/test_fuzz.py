"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis): no 5xx, every status, content type and body as
documented. ``FUZZ_EXAMPLES`` sets the examples per operation (CI: 40, the same ones each run); ``FUZZ_RANDOM=1``
draws new ones."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
RANDOM = bool(os.environ.get("FUZZ_RANDOM"))  # CI replays the same examples; set this to explore new ones
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_no_server_error_and_every_answer_as_documented(digits_app):
    schema = schemathesis.openapi.from_url(digits_app.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/audio/transcriptions", "/transcribe", "/healthz"}
    calls: list[int] = []
    for operation in operations:
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  derandomize=not RANDOM)
        @given(case=operation.as_strategy())
        def check(case):
            response = case.call_and_validate(base_url=digits_app.url, timeout=120, checks=CHECKS)
            calls.append(response.status_code)

        check()
    print(f"fuzz: {len(calls)} requests over {len(operations)} operations; statuses {sorted(set(calls))}")
    assert len(calls) >= EXAMPLES and all(status < 500 for status in calls)
