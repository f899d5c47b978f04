"""Schemathesis hooks for tests/test_hardening.py: what the OpenAPI document cannot say.

A support set's ``x`` and ``y`` must have as many rows as each other; JSON Schema has no way to
state that two arrays have equal lengths, so generated bodies get both cut to the shorter one
(mismatched lengths are still tested by hand: tests/test_serve.py expects 422 for them).
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    support = body.get("support") if isinstance(body, dict) else None
    if isinstance(support, dict):
        x, y = support.get("x"), support.get("y")
        if isinstance(x, list) and isinstance(y, list) and x and y:
            rows = min(len(x), len(y))
            body = {**body, "support": {**support, "x": x[:rows], "y": y[:rows]}}
    return body


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    case.body = map_body(context, case.body)
    return case
