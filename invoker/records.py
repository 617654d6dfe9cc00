"""From a pool outcome to OpenWhisk's activation response and record. No I/O.

The response rules are OpenWhisk's: a 200 JSON object is a success unless it has
an "error" field (application error); anything else the container says or fails
to say is the action developer's error; a failure of the platform is a whisk
internal error, so the user knows the action may not have run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from container_pool.pool import Outcome
from proto import squall_pb2 as pb
from squall.jsonbytes import as_sent

SUCCESS, APPLICATION_ERROR, DEVELOPER_ERROR, WHISK_ERROR = 0, 1, 2, 3
STATUS = {
    SUCCESS: "success",
    APPLICATION_ERROR: "application error",
    DEVELOPER_ERROR: "action developer error",
    WHISK_ERROR: "whisk internal error",
}


def response(code: int, result: Any) -> dict:
    return {"status": STATUS[code], "statusCode": code, "success": code == SUCCESS, "result": result}


def _error_field(body: bytes) -> Any | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value.get("error") if isinstance(value, dict) else None


def interpret(outcome: Outcome, timeout_ms: int, max_result_bytes: int) -> dict:
    if outcome.error == "timeout":
        during = " during initialization" if outcome.detail == "init" else ""
        return response(DEVELOPER_ERROR, {"error": f"The action exceeded its time limits of {timeout_ms} milliseconds{during}."})
    if outcome.error == "oom":
        return response(DEVELOPER_ERROR, {"error": "The action exhausted its memory and was aborted."})
    if outcome.error in ("crashed", "refused"):
        return response(DEVELOPER_ERROR, {"error": "The action did not produce a valid response and exited unexpectedly."})
    if outcome.error == "init_failed":
        reply = outcome.init_reply
        error = _error_field(reply.body) if reply else None
        return response(DEVELOPER_ERROR, {"error": error or "The action failed during initialization."})
    reply = outcome.run_reply
    if reply is None:
        return response(WHISK_ERROR, {"error": "The action was not run."})
    if len(reply.body) > max_result_bytes:
        return response(DEVELOPER_ERROR, {"error": (
            f"The action produced a response that exceeded the allowed length: "
            f"{len(reply.body)} > {max_result_bytes} bytes.")})
    try:
        result = json.loads(reply.body)
    except ValueError:
        result = None
    if not isinstance(result, dict):
        return response(DEVELOPER_ERROR, {"error": "The action did not produce a valid JSON response: "
                                          + reply.body[:1000].decode("utf-8", "replace")})
    if reply.status != 200:
        return response(DEVELOPER_ERROR, {"error": result.get("error", result)})
    if "error" in result:
        return response(APPLICATION_ERROR, {"error": result["error"]})
    return response(SUCCESS, result)


@dataclass(frozen=True)
class ActionInfo:
    """What a record tells of the action that ran."""
    namespace: str
    name: str          # "pkg/action" inside a package
    version: str
    kind: str
    limits: dict
    publish: bool = False

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.name}"


def raw_result(outcome: Outcome | None, resp: dict) -> bytes | None:
    """A successful result as the action's proxy wrote it, to go into the record as it is
    instead of being encoded again (a large result costs milliseconds a pass); else None."""
    reply = outcome.run_reply if outcome is not None else None
    if resp["statusCode"] != SUCCESS or reply is None or not as_sent(reply.body):
        return None
    return reply.body


def encode(record: dict, raw: bytes | None = None) -> bytes:
    """The record as compact JSON; with raw, its response's result is those bytes, last (see
    result_at)."""
    if raw is None:
        return json.dumps(record, separators=(",", ":")).encode()
    response = record["response"]
    head = json.dumps({k: v for k, v in record.items() if k != "response"}, separators=(",", ":"))
    fields = json.dumps({k: v for k, v in response.items() if k != "result"}, separators=(",", ":"))
    return b"".join((head[:-1].encode(), b',"response":', fields[:-1].encode(), b',"result":', raw, b"}}"))


def result_at(encoded: bytes, raw: bytes | None) -> int:
    """Where the result begins in a record encoded with raw (it ends 2 bytes before the end:
    the Completion's result_at); 0 without raw."""
    return len(encoded) - len(raw) - 2 if raw is not None else 0


def record(msg: pb.ActivationMessage, action: ActionInfo, resp: dict, outcome: Outcome | None,
           start_ms: int, end_ms: int, raw: bytes | None = None) -> dict:
    annotations = [
        {"key": "path", "value": msg.path or action.path},
        {"key": "waitTime", "value": max(start_ms - msg.submitted_ms, 0)},
        {"key": "kind", "value": action.kind},
        {"key": "timeout", "value": outcome is not None and outcome.error == "timeout"},
        {"key": "limits", "value": action.limits},
    ]
    if msg.cause:
        annotations.append({"key": "causedBy", "value": "sequence"})
    if outcome is not None:
        annotations.append({"key": "containerStart", "value": outcome.start})
        if outcome.init_ms is not None:
            annotations.append({"key": "initTime", "value": outcome.init_ms})
    doc = {
        "namespace": msg.user_namespace,
        "name": action.name.rsplit("/", 1)[-1],
        "version": action.version,
        "subject": msg.subject,
        "activationId": msg.activation_id,
        "start": start_ms,
        "end": end_ms,
        "duration": max(end_ms - start_ms, 0),
        "statusCode": resp["statusCode"],
        "response": {**resp, "size": len(raw) if raw is not None else len(json.dumps(resp["result"], separators=(",", ":")))},
        "logs": outcome.logs if outcome else [],
        "annotations": annotations,
        "publish": action.publish,
    }
    if msg.cause:
        doc["cause"] = msg.cause
    return doc


def failed(msg: pb.ActivationMessage, message: str, now_ms: int) -> dict:
    """The record of an activation that cannot be run or finished: a whisk internal error."""
    info = ActionInfo(msg.namespace, msg.name, "0.0.1", "unknown", {})
    return record(msg, info, response(WHISK_ERROR, {"error": message}), None, now_ms, now_ms)
