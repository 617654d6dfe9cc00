"""OpenWhisk entity documents: validation and construction, no I/O.

Documents keep OpenWhisk's JSON shape (namespace, name, version, exec, parameters,
annotations, limits, publish, updated) so the edge can return them verbatim.
"""
from __future__ import annotations

import re
import time
from typing import Any

from container_pool.runtimes import resolve
from squall.config import LimitsConfig
from squall.errors import BadRequest

COLLECTIONS = ("actions", "packages", "triggers", "rules")

_NAME = re.compile(r"\A([\w]|[\w][\w@ .-]*[\w@.-]+)\Z")
NAME_MAX = 256


def validate_name(name: str, allow_package: bool = False) -> str:
    parts = name.split("/") if allow_package else [name]
    if len(parts) > 2 or not all(_valid_segment(p) for p in parts):
        raise BadRequest("The name of the entity contains illegal characters.")
    return name


def _valid_segment(part: str) -> bool:
    return 0 < len(part) <= NAME_MAX and bool(_NAME.match(part))


def key_values(body: dict, field: str) -> list[dict]:
    """OpenWhisk's [{"key": k, "value": v}] lists (parameters, annotations)."""
    items = body.get(field, [])
    if items is None:
        return []
    if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get("key"), str) and "value" in i for i in items):
        raise BadRequest(f"The request content was malformed:\n{field} must be a list of key/value objects.")
    return [{"key": i["key"], "value": i["value"], **({"init": True} if i.get("init") else {})} for i in items]


def bump_version(version: str) -> str:
    try:
        major, minor, patch = (int(p) for p in version.split("."))
    except ValueError:
        return "0.0.1"
    return f"{major}.{minor}.{patch + 1}"


def _limits(body: dict, previous: dict | None, cfg: LimitsConfig) -> dict:
    given = body.get("limits") or {}
    if not isinstance(given, dict):
        raise BadRequest("The request content was malformed:\nlimits must be an object.")
    base = previous or {
        "timeout": cfg.timeout_default_ms,
        "memory": cfg.memory_default_mb,
        "logs": cfg.logs_default_mb,
        "concurrency": cfg.concurrency_default,
    }
    bounds = {
        "timeout": (cfg.timeout_min_ms, cfg.timeout_max_ms, "milliseconds"),
        "memory": (cfg.memory_min_mb, cfg.memory_max_mb, "MB"),
        "logs": (cfg.logs_min_mb, cfg.logs_max_mb, "MB"),
        "concurrency": (cfg.concurrency_min, cfg.concurrency_max, "activations"),
    }
    out = dict(base)
    for name, (lo, hi, unit) in bounds.items():
        if name not in given:
            continue
        value = given[name]
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadRequest(f"The request content was malformed:\n{name} limit must be an integer.")
        if value < lo:
            raise BadRequest(f"{name} {value} {unit} below allowed threshold of {lo} {unit}.")
        if value > hi:
            raise BadRequest(f"{name} {value} {unit} exceeds allowed threshold of {hi} {unit}.")
        out[name] = value
    return out


def _exec(body: dict, previous: dict | None) -> dict:
    exec_ = body.get("exec")
    if exec_ is None:
        if previous is None:
            raise BadRequest("The request content was malformed:\nexec undefined")
        return previous["exec"]
    if not isinstance(exec_, dict) or not isinstance(exec_.get("kind"), str):
        raise BadRequest("The request content was malformed:\nexec kind undefined")
    kind = exec_["kind"]
    if kind == "blackbox":
        if not isinstance(exec_.get("image"), str) or not exec_["image"]:
            raise BadRequest("The request content was malformed:\nimage undefined for blackbox action")
        out = {"kind": "blackbox", "image": exec_["image"], "binary": bool(exec_.get("binary", False))}
        if isinstance(exec_.get("code"), str):
            out["code"] = exec_["code"]
    elif kind == "sequence":
        components = exec_.get("components")
        if not isinstance(components, list) or not components or not all(isinstance(c, str) for c in components):
            raise BadRequest("The request content was malformed:\nsequence components undefined")
        return {"kind": "sequence", "components": components, "binary": False}
    else:
        runtime = resolve(kind)
        if runtime is None:
            raise BadRequest(f"The request content was malformed:\nkind '{kind}' not in Set{{{', '.join(sorted(_known_kinds()))}}}")
        code = exec_.get("code")
        if not isinstance(code, str) or not code:
            raise BadRequest("The request content was malformed:\nexec code undefined")
        kind = runtime.kind if kind.endswith(":default") else kind
        out = {"kind": kind, "code": code, "binary": bool(exec_.get("binary", False))}
    if exec_.get("main"):
        if not isinstance(exec_["main"], str):
            raise BadRequest("The request content was malformed:\nmain must be a string")
        out["main"] = exec_["main"]
    return out


def _known_kinds() -> set[str]:
    from container_pool.runtimes import ALIASES, RUNTIMES
    return {r.kind for r in RUNTIMES} | set(ALIASES) | {"blackbox", "sequence"}


def build_action(namespace: str, name: str, body: Any, previous: dict | None, cfg: LimitsConfig) -> dict:
    """The stored action document for a PUT body; `previous` is the document being updated."""
    if not isinstance(body, dict):
        raise BadRequest("The request content was malformed:\nexpected a JSON object")
    exec_ = _exec(body, previous)
    annotations = key_values(body, "annotations") if "annotations" in body else (previous or {}).get("annotations", [])
    annotations = [a for a in annotations if a["key"] != "exec"] + [{"key": "exec", "value": exec_["kind"]}]
    return {
        "namespace": namespace,
        "name": name,
        "version": bump_version(previous["version"]) if previous else "0.0.1",
        "exec": exec_,
        "parameters": key_values(body, "parameters") if "parameters" in body else (previous or {}).get("parameters", []),
        "annotations": annotations,
        "limits": _limits(body, (previous or {}).get("limits"), cfg),
        "publish": bool(body.get("publish", (previous or {}).get("publish", False))),
        "updated": int(time.time() * 1000),
    }


def without_code(doc: dict) -> dict:
    exec_ = {k: v for k, v in doc.get("exec", {}).items() if k != "code"}
    return {**doc, "exec": exec_}


def summary(doc: dict) -> dict:
    """An entry of a list response (OpenWhisk lists omit code and parameters)."""
    out = {k: doc[k] for k in ("namespace", "name", "version", "annotations", "publish", "updated") if k in doc}
    if "exec" in doc:
        out["exec"] = {"binary": doc["exec"].get("binary", False)}
    if "limits" in doc:
        out["limits"] = doc["limits"]
    return out
