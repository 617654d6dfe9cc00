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
        out = {"kind": kind, "code": code, "binary": bool(exec_.get("binary", False)) or _is_base64(code)}
    if exec_.get("main"):
        if not isinstance(exec_["main"], str):
            raise BadRequest("The request content was malformed:\nmain must be a string")
        out["main"] = exec_["main"]
    return out


_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def _is_base64(code: str) -> bool:
    """OpenWhisk's test for a zip sent as code (wsk sends no `binary` flag): all of it base64
    (source code has spaces, newlines or brackets)."""
    text = code.strip()
    return len(text) > 0 and len(text) % 4 == 0 and _BASE64.match(text) is not None


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


def public(doc: dict) -> dict:
    """As OpenWhisk shows an action inside a package: namespace "ns/pkg", name "action"."""
    package, _, short = doc.get("name", "").rpartition("/")
    return {**doc, "namespace": f"{doc['namespace']}/{package}", "name": short} if package else doc


def without_code(doc: dict) -> dict:
    exec_ = {k: v for k, v in doc.get("exec", {}).items() if k != "code"}
    return {**doc, "exec": exec_}


def summary(doc: dict) -> dict:
    """An entry of a list response (OpenWhisk lists omit code and parameters)."""
    doc = public(doc)
    out = {k: doc[k] for k in ("namespace", "name", "version", "annotations", "publish", "updated") if k in doc}
    if "exec" in doc:
        out["exec"] = {"binary": doc["exec"].get("binary", False)}
    if "limits" in doc:
        out["limits"] = doc["limits"]
    return out


# Fully qualified names

def split_fqn(path: str, default_namespace: str) -> tuple[str, str]:
    """OpenWhisk's entity paths to (namespace, name): "/ns/name" and "/ns/pkg/name" are fully
    qualified, "name" and "pkg/name" are in the default namespace, "_" means the default."""
    if not isinstance(path, str) or not path.strip("/"):
        raise BadRequest("The request content was malformed:\nentity name undefined")
    if path.startswith("/"):
        parts = path.strip("/").split("/")
        if len(parts) < 2 or len(parts) > 3:
            raise BadRequest(f"The entity name '{path}' is not fully qualified.")
        namespace, name = parts[0], "/".join(parts[1:])
    else:
        namespace, name = default_namespace, path
    namespace = default_namespace if namespace == "_" else namespace
    return namespace, validate_name(name, allow_package=True)


def path_of(namespace: str, name: str) -> dict:
    """OpenWhisk's {"path", "name"} reference: path is the namespace, plus the package if any."""
    package, _, short = name.rpartition("/")
    return {"path": f"{namespace}/{package}" if package else namespace, "name": short}


# Packages, triggers, rules

def _common(namespace: str, name: str, body: Any, previous: dict | None) -> dict:
    if not isinstance(body, dict):
        raise BadRequest("The request content was malformed:\nexpected a JSON object")
    prev = previous or {}
    return {
        "namespace": namespace,
        "name": name,
        "version": bump_version(prev["version"]) if previous else "0.0.1",
        "parameters": key_values(body, "parameters") if "parameters" in body else prev.get("parameters", []),
        "annotations": key_values(body, "annotations") if "annotations" in body else prev.get("annotations", []),
        "publish": bool(body.get("publish", prev.get("publish", False))),
        "updated": int(time.time() * 1000),
    }


def build_package(namespace: str, name: str, body: Any, previous: dict | None) -> dict:
    doc = _common(namespace, validate_name(name), body, previous)
    binding = body.get("binding", (previous or {}).get("binding", {})) or {}
    if not isinstance(binding, dict):
        raise BadRequest("The request content was malformed:\nbinding must be an object")
    if binding:
        if not isinstance(binding.get("namespace"), str) or not isinstance(binding.get("name"), str):
            raise BadRequest("The request content was malformed:\nbinding needs namespace and name")
        binding = {"namespace": binding["namespace"], "name": validate_name(binding["name"])}
    doc["binding"] = binding
    return doc


def build_trigger(namespace: str, name: str, body: Any, previous: dict | None) -> dict:
    doc = _common(namespace, validate_name(name), body, previous)
    doc["limits"] = {}
    return doc


def build_rule(namespace: str, name: str, body: Any, previous: dict | None) -> tuple[dict, tuple[str, str], tuple[str, str]]:
    """The rule document, and the (namespace, name) of its trigger and of its action."""
    doc = _common(namespace, validate_name(name), body, previous)
    prev = previous or {}
    trigger = body.get("trigger") or _joined(prev.get("trigger"))
    action = body.get("action") or _joined(prev.get("action"))
    if not trigger or not action:
        raise BadRequest("The request content was malformed:\nrule needs a trigger and an action")
    t_ns, t_name = split_fqn(trigger, namespace)
    a_ns, a_name = split_fqn(action, namespace)
    # wsk sends "status": "" with every rule PUT; OpenWhisk reads that as no status given.
    status = body.get("status") or prev.get("status", "active")
    if status not in ("active", "inactive"):
        raise BadRequest("The request content was malformed:\nstatus must be 'active' or 'inactive'")
    doc.update(trigger=path_of(t_ns, t_name), action=path_of(a_ns, a_name), status=status, publish=False)
    return doc, (t_ns, t_name), (a_ns, a_name)


def _joined(ref: dict | None) -> str | None:
    return f"/{ref['path']}/{ref['name']}" if ref else None


def annotation(doc: dict, key: str, default: Any = None) -> Any:
    return next((a["value"] for a in doc.get("annotations", []) if a["key"] == key), default)


def parameters(doc: dict) -> dict:
    return {p["key"]: p["value"] for p in doc.get("parameters", [])}


def system_action(namespace: str, name: str, code: str, memory_mb: int = 256,
                  annotations: tuple[tuple[str, Any], ...] = ()) -> dict:
    """An action the platform itself installs (feeds, health tests): a Python action document."""
    return build_action(namespace, name, {
        "exec": {"kind": "python:3", "code": code},
        "annotations": [{"key": k, "value": v} for k, v in annotations],
        "limits": {"memory": memory_mb},
    }, None, LimitsConfig())

