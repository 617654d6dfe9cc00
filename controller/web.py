"""Web actions: /api/v1/web/{namespace}/{package}/{action}.{extension}, as OpenWhisk serves them.

An action annotated web-export=true answers plain HTTP, without credentials unless it is also
annotated require-whisk-auth (true: the caller's OpenWhisk key; a string: that value in the
X-Require-Whisk-Auth header). The request becomes parameters (__ow_method, __ow_headers,
__ow_path, and the query and body, merged; or __ow_query and __ow_body as they came with
raw-http=true); the result becomes the response according to the extension:
.json the result as JSON, .html/.text/.svg that field of the result, .http (and none) the
result's statusCode, headers and body (base64 for binary content).
"""
from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from dataclasses import dataclass

from controller import entities
from controller.activator import Activator
from controller.auth import Authenticator, Identity
from controller.waiters import Completed
from squall.errors import BadRequest, NotFound, Unauthenticated

CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "OPTIONS, GET, DELETE, POST, PUT, HEAD, PATCH",
    "Access-Control-Allow-Headers": "Authorization, Origin, X-Requested-With, Content-Type, Accept, User-Agent",
}
FIELDS = {"html": ("html", "text/html; charset=UTF-8"), "text": ("text", "text/plain; charset=UTF-8"),
          "svg": ("svg", "image/svg+xml")}
TEXTUAL = ("text/", "application/json", "application/javascript", "application/xml", "image/svg+xml")


@dataclass
class WebResponse:
    status: int
    headers: dict
    body: bytes


def _error(status: int, message: str) -> WebResponse:
    return WebResponse(status, {"Content-Type": "application/json", **CORS},
                       json.dumps({"error": message}).encode())


class WebActions:
    def __init__(self, activator: Activator, auth: Authenticator, wait_s: float, max_payload: int):
        self._activator = activator
        self._auth = auth
        self._wait_s = wait_s
        self._max_payload = max_payload

    async def handle(self, namespace: str, package: str, action: str, extension: str, method: str,
                     headers: dict, path: str, query: str, body: bytes, content_type: str,
                     authorization: str | None) -> WebResponse:
        owner = Identity(subject=namespace, uuid="", key="", namespaces=(namespace,))
        name = action if package in ("default", "") else f"{package}/{action}"
        resolved = await self._activator.resolve(owner, namespace, entities.validate_name(name, allow_package=True))
        doc = resolved.doc
        if entities.annotation(doc, "web-export") is not True:
            raise NotFound()
        if method == "options" and entities.annotation(doc, "web-custom-options") is not True:
            return WebResponse(200, dict(CORS), b"")
        await self._check_auth(doc, headers, authorization)
        params = self._params(doc, method, headers, path, query, body, content_type)
        if len(json.dumps(params)) > self._max_payload:
            return _error(413, "The request content was too large.")
        activation_id, record = await self._activator.invoke(owner, resolved, params, namespace, True, self._wait_s)
        answer = self._answer(doc, extension, activation_id, record)
        answer.headers["x-openwhisk-activation-id"] = activation_id   # as OpenWhisk's web actions answer
        return answer

    def _answer(self, doc: dict, extension: str, activation_id: str, record: Completed | None) -> WebResponse:
        if record is None:
            return WebResponse(202, {"Content-Type": "application/json", **CORS},
                               json.dumps({"activationId": activation_id}).encode())
        resp = json.loads(record.record)["response"]
        result = resp.get("result") or {}
        if not resp.get("success"):
            status = 400 if resp.get("statusCode") == 1 else 502
            return _error(status, result.get("error", "The action did not succeed.")
                          if isinstance(result.get("error"), str) else json.dumps(result.get("error")))
        return self._render(extension or "http", result, custom_cors=entities.annotation(doc, "web-custom-options") is True)

    async def _check_auth(self, doc: dict, headers: dict, authorization: str | None) -> None:
        required = entities.annotation(doc, "require-whisk-auth")
        if required in (None, False):
            return
        if required is True:
            await self._auth.authenticate(authorization)   # raises Unauthenticated
            return
        if headers.get("x-require-whisk-auth") != str(required):
            raise Unauthenticated()

    @staticmethod
    def _params(doc: dict, method: str, headers: dict, path: str, query: str, body: bytes,
                content_type: str) -> dict:
        ow = {"__ow_method": method, "__ow_headers": headers, "__ow_path": path}
        binary = bool(body) and not content_type.startswith(TEXTUAL) \
            and not content_type.startswith("application/x-www-form-urlencoded")
        if entities.annotation(doc, "raw-http") is True:
            text = base64.b64encode(body).decode() if binary else body.decode("utf-8", "replace")
            return {**ow, "__ow_query": query, "__ow_body": text} if body else {**ow, "__ow_query": query}
        params: dict = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        if body:
            if content_type.startswith("application/json"):
                try:
                    value = json.loads(body)
                except ValueError:
                    raise BadRequest("The request content was malformed:\nbody is not JSON") from None
                if isinstance(value, dict):
                    params.update(value)
                else:
                    params["__ow_body"] = body.decode()
            elif content_type.startswith("application/x-www-form-urlencoded"):
                params.update(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            else:
                params["__ow_body"] = base64.b64encode(body).decode() if binary else body.decode("utf-8", "replace")
        return {**params, **ow}

    @staticmethod
    def _render(extension: str, result: dict, custom_cors: bool) -> WebResponse:
        cors = {} if custom_cors else CORS
        if extension == "json":
            return WebResponse(200, {"Content-Type": "application/json", **cors}, json.dumps(result).encode())
        if extension in FIELDS:
            field, ctype = FIELDS[extension]
            value = result.get(field)
            if not isinstance(value, str):
                return _error(400, f"The action did not return a '{field}' field for .{extension}.")
            return WebResponse(200, {"Content-Type": ctype, **cors}, value.encode())
        if extension != "http":
            return _error(400, f"Extension .{extension} is not supported.")
        headers = {**cors, **{str(k): str(v) for k, v in (result.get("headers") or {}).items()}}
        body = result.get("body")
        status = result.get("statusCode", result.get("code", 200 if body is not None else 204))
        if not isinstance(status, int) or not 100 <= status <= 599:
            return _error(400, "The action returned an invalid statusCode.")
        ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
        if body is None:
            data = b""
        elif isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            if ctype is None:
                headers["Content-Type"] = "application/json"
        elif isinstance(body, str):
            if ctype and not ctype.startswith(TEXTUAL):
                try:
                    data = base64.b64decode(body, validate=True)   # binary content comes base64
                except (binascii.Error, ValueError):
                    return _error(400, "The action returned a body that is not valid base64 for its content type.")
            else:
                data = body.encode()
                if ctype is None:
                    headers["Content-Type"] = "text/html; charset=UTF-8"
        else:
            data = json.dumps(body).encode()
        return WebResponse(status, headers, data)

