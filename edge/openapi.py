"""The OpenAPI description of the REST API, built from the same route table the edge serves,
so the two cannot drift apart (tests/test_api.py checks every route is described)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

ERRORS = {"400": "malformed request", "401": "wrong or missing credentials", "403": "not allowed",
          "404": "no such entity", "413": "payload too large", "429": "throttled", "502": "the action failed",
          "503": "a backend is unavailable"}


@dataclass(frozen=True)
class Doc:
    summary: str
    responses: dict = field(default_factory=lambda: {"200": "OK"})
    query: tuple[str, ...] = ()
    body: bool = False


def expand(pattern: str) -> list[str]:
    """aiohttp's pattern to OpenAPI paths: {x:a|b} becomes each alternative, {x:.+} becomes {x}."""
    match = re.search(r"\{(\w+):([\w|]+)\}", pattern)
    if match:
        return [p for alt in match.group(2).split("|")
                for p in expand(pattern[:match.start()] + alt + pattern[match.end():])]
    return [re.sub(r"\{(\w+):[^}]+\}", r"{\1}", pattern)]


def document(routes: list[tuple[str, str, object, Doc]]) -> dict:
    paths: dict[str, dict] = {}
    for method, pattern, _, doc in routes:
        methods = ("get", "post", "put", "delete", "options") if method == "*" else (method.lower(),)
        for path in expand(pattern):
            if path.endswith("/") and path != "/":
                continue   # the same route with a trailing slash
            params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                      for n in re.findall(r"\{(\w+)\}", path)]
            params += [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}} for q in doc.query]
            for m in methods:
                op = {"summary": doc.summary, "parameters": params,
                      "responses": {code: {"description": text} for code, text in {**doc.responses, **ERRORS}.items()}}
                if doc.body and m in ("put", "post"):
                    op["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
                paths.setdefault(path, {})[m] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "Squall: OpenWhisk REST API v1", "version": "1.0.0",
                 "description": "Apache OpenWhisk's REST API v1 as Squall serves it. Basic auth with uuid:key; "
                                "errors are {\"error\": ..., \"code\": ...}."},
        "components": {"securitySchemes": {"basic": {"type": "http", "scheme": "basic"}}},
        "security": [{"basic": []}],
        "paths": paths,
    }
