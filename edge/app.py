"""OpenWhisk REST API v1 over HTTP, forwarded to the controller's gRPC API.

The edge translates and forwards: bodies go through as bytes (the controller
parses and validates them), answers come back as stored JSON.
"""
from __future__ import annotations

import json
import secrets
import time
from typing import Awaitable, Callable

import grpc
from aiohttp import web

from edge.errors import ACTIVATION_TO_HTTP, error_response, from_grpc, from_status
from edge.stream import CallFailed, InvokeStream
from edge.openapi import Doc, document
from proto import squall_pb2 as pb
from proto import squall_pb2_grpc as pb_grpc
from squall.config import SquallConfig
from squall.metrics import EdgeMetrics

API = "/api/v1"
JSON = "application/json"
TRUE = ("true", "True", "1", "yes")
ACTIVATION_ID = "x-openwhisk-activation-id"

STUB = web.AppKey("stub", pb_grpc.SquallStub)
INVOKES = web.AppKey("invokes", InvokeStream)
CONFIG = web.AppKey("config", SquallConfig)
METRICS = web.AppKey("metrics", EdgeMetrics)


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, content_type=JSON)


def _activation_json(body: bytes, activation_id: str, status: int = 200) -> web.Response:
    """An invocation's answer, with its activation id in OpenWhisk's header too (a result-only
    body does not carry it)."""
    return web.Response(status=status, body=body, content_type=JSON, headers={ACTIVATION_ID: activation_id})


def _meta(request: web.Request) -> tuple[tuple[str, str], ...]:
    auth = request.headers.get("Authorization")
    return (("authorization", auth),) if auth else ()


def _flag(request: web.Request, name: str, default: bool = False) -> bool:
    value = request.query.get(name)
    return default if value is None else value in TRUE


def _int(request: web.Request, name: str) -> int:
    try:
        return int(request.query.get(name, "0"))
    except ValueError:
        return 0


Handler = Callable[[web.Request], Awaitable[web.Response]]


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request count and latency by route pattern (not by path: names would explode the labels)."""
    started = time.perf_counter()
    response = await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    metrics = request.app[METRICS]
    metrics.requests.labels(route, request.method, str(response.status)).inc()
    metrics.latency.labels(route, request.method).observe(time.perf_counter() - started)
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    code = secrets.token_hex(16)   # OpenWhisk's "code": the transaction id of the request
    try:
        return await handler(request)
    except grpc.aio.AioRpcError as exc:
        return from_grpc(exc, code)
    except CallFailed as exc:
        return from_status(exc.code, exc.details, code)
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(413, f"The request content was too large: {exc.text}", code)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: "The requested resource does not exist.", 405: "Method not allowed."}.get(exc.status, exc.reason)
        return error_response(exc.status, message, code)


async def list_namespaces(request: web.Request) -> web.Response:
    reply = await request.app[STUB].ListNamespaces(pb.ListNamespacesRequest(), metadata=_meta(request))
    return _json(reply.list_json)


def _ref(request: web.Request) -> pb.EntityRef:
    m = request.match_info
    return pb.EntityRef(namespace=m["ns"], collection=m["collection"], name=m.get("name", ""),
                        code=_flag(request, "code", True))


async def put_entity(request: web.Request) -> web.Response:
    body = await request.read()
    reply = await request.app[STUB].PutEntity(
        pb.PutEntityRequest(ref=_ref(request), doc_json=body, overwrite=_flag(request, "overwrite")),
        metadata=_meta(request))
    return _json(reply.doc_json)


async def get_entity(request: web.Request) -> web.Response:
    reply = await request.app[STUB].GetEntity(_ref(request), metadata=_meta(request))
    return _json(reply.doc_json)


async def delete_entity(request: web.Request) -> web.Response:
    reply = await request.app[STUB].DeleteEntity(_ref(request), metadata=_meta(request))
    return _json(reply.doc_json)


async def list_entities(request: web.Request) -> web.Response:
    m = request.match_info
    reply = await request.app[STUB].ListEntities(pb.ListEntitiesRequest(
        namespace=m["ns"], collection=m["collection"], limit=_int(request, "limit"),
        skip=_int(request, "skip"), count=_flag(request, "count")), metadata=_meta(request))
    return _json(reply.list_json)


async def invoke(request: web.Request) -> web.Response:
    m = request.match_info
    blocking = _flag(request, "blocking")
    body = await request.read()
    wait_s = request.app[CONFIG].controller.blocking_wait_s
    reply = await request.app[INVOKES].invoke(pb.InvokeRequest(
        namespace=m["ns"], name=m["name"], params_json=body, blocking=blocking,
        result_only=_flag(request, "result"), wait_ms=_int(request, "timeout")),
        request.headers.get("Authorization"), timeout_s=wait_s + 30)
    if not reply.done:
        return _activation_json(json.dumps({"activationId": reply.activation_id}).encode(), reply.activation_id, 202)
    status = ACTIVATION_TO_HTTP.get(reply.status_code, 500)
    return _activation_json(reply.result_json if _flag(request, "result") else reply.activation_json,
                            reply.activation_id, status)


async def get_activation(request: web.Request) -> web.Response:
    m = request.match_info
    reply = await request.app[STUB].GetActivation(
        pb.ActivationRef(namespace=m["ns"], activation_id=m["id"]), metadata=_meta(request))
    return _json(reply.activation_json)


async def list_invokers(request: web.Request) -> web.Response:
    reply = await request.app[STUB].ListInvokers(pb.ListInvokersRequest(), metadata=_meta(request))
    return _json(reply.list_json)


async def get_limits(request: web.Request) -> web.Response:
    reply = await request.app[STUB].GetLimits(pb.LimitsRequest(namespace=request.match_info["ns"]),
                                              metadata=_meta(request))
    return _json(reply.doc_json)


async def get_activation_part(request: web.Request) -> web.Response:
    m = request.match_info
    reply = await request.app[STUB].GetActivation(
        pb.ActivationRef(namespace=m["ns"], activation_id=m["id"]), metadata=_meta(request))
    record = json.loads(reply.activation_json)
    if m["part"] == "logs":
        return web.json_response({"logs": record.get("logs", [])})
    return web.json_response(record.get("response", {}))


async def list_activations(request: web.Request) -> web.Response:
    m, q = request.match_info, request.query
    reply = await request.app[STUB].ListActivations(pb.ListActivationsRequest(
        namespace=m["ns"], name=q.get("name", ""), since=_int(request, "since"), upto=_int(request, "upto"),
        skip=_int(request, "skip"), limit=_int(request, "limit"), docs=_flag(request, "docs"),
        count=_flag(request, "count")),
        metadata=_meta(request))
    return _json(reply.list_json)


async def fire_trigger(request: web.Request) -> web.Response:
    m = request.match_info
    reply = await request.app[STUB].FireTrigger(pb.FireRequest(
        namespace=m["ns"], name=m["name"], params_json=await request.read()), metadata=_meta(request))
    if not reply.activation_id:   # no active rule: nothing ran (OpenWhisk's 204)
        return web.Response(status=204)
    return _activation_json(json.dumps({"activationId": reply.activation_id}).encode(), reply.activation_id, 202)


async def set_rule_status(request: web.Request) -> web.Response:
    m = request.match_info
    try:
        status = json.loads(await request.read() or b"{}").get("status", "")
    except (ValueError, AttributeError):
        status = ""
    reply = await request.app[STUB].SetRuleStatus(pb.RuleStatusRequest(
        namespace=m["ns"], name=m["name"], status=status if isinstance(status, str) else ""), metadata=_meta(request))
    return _json(reply.doc_json)


WEB_EXTENSIONS = ("json", "html", "http", "text", "svg")


async def web_action(request: web.Request) -> web.Response:
    m = request.match_info
    first, _, rest = m["rest"].partition("/")
    action, dot, extension = first.rpartition(".")
    if not dot or extension not in WEB_EXTENSIONS:
        action, extension = first, ""
    headers = {k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"}
    reply = await request.app[STUB].WebInvoke(pb.WebRequest(
        namespace=m["ns"], package=m["pkg"], action=action, extension=extension,
        method=request.method.lower(), headers_json=json.dumps(headers).encode(),
        path="/" + rest if rest else "", query=request.query_string, body=await request.read(),
        content_type=request.content_type or ""), metadata=_meta(request),
        timeout=request.app[CONFIG].controller.blocking_wait_s + 30)
    return web.Response(status=reply.status, headers=json.loads(reply.headers_json), body=reply.body)


async def api_info(request: web.Request) -> web.Response:
    return web.json_response({"description": "Squall: an OpenWhisk-compatible serverless platform",
                              "api_paths": [API], "api_version": "1.0.0"})


def routes() -> list[tuple[str, str, Handler, Doc]]:
    """Every route the edge serves, with its description for the OpenAPI document."""
    ns = API + "/namespaces/{ns}"
    entity = ns + "/{collection:actions|packages|triggers|rules}"
    paging = ("limit", "skip", "count")
    return [
        ("GET", "/", api_info, Doc("API information")),
        ("GET", API, api_info, Doc("API information")),
        ("GET", API + "/api-docs", api_docs, Doc("This OpenAPI document")),
        ("GET", API + "/namespaces", list_namespaces, Doc("The caller's namespaces")),
        ("GET", API + "/invokers", list_invokers, Doc("The invokers: status, capacity and load")),
        ("GET", ns + "/limits", get_limits, Doc("The namespace's throttles")),
        ("GET", ns + "/activations", list_activations,
         Doc("List activations, newest first", query=("name", "since", "upto", "skip", "limit", "docs", "count"))),
        ("GET", ns + "/activations/", list_activations, Doc("List activations")),
        ("GET", ns + "/activations/{id}", get_activation, Doc("An activation record")),
        ("GET", ns + "/activations/{id}/{part:result|logs}", get_activation_part, Doc("An activation's result or logs")),
        ("GET", entity, list_entities, Doc("List entities", query=paging)),
        ("GET", entity + "/", list_entities, Doc("List entities", query=paging)),
        ("PUT", entity + "/{name:.+}", put_entity, Doc("Create or update an entity", query=("overwrite",), body=True)),
        ("GET", entity + "/{name:.+}", get_entity, Doc("Get an entity", query=("code",))),
        ("DELETE", entity + "/{name:.+}", delete_entity, Doc("Delete an entity")),
        ("POST", ns + "/actions/{name:.+}", invoke,
         Doc("Invoke an action", {"200": "the activation (blocking)", "202": "the activation id"},
             query=("blocking", "result", "timeout"), body=True)),
        ("POST", ns + "/triggers/{name}", fire_trigger,
         Doc("Fire a trigger", {"202": "the trigger's activation id", "204": "no active rule: nothing ran"}, body=True)),
        ("POST", ns + "/rules/{name}", set_rule_status, Doc("Enable or disable a rule", body=True)),
        ("*", API + "/web/{ns}/{pkg}/{rest:.+}", web_action,
         Doc("A web action: {action}.{json|html|http|text|svg}[/path]", {"200": "the action's response"}, body=True)),
    ]


async def api_docs(request: web.Request) -> web.Response:
    return web.json_response(document(routes()))


def build_app(cfg: SquallConfig, channel: grpc.aio.Channel, metrics: EdgeMetrics | None = None) -> web.Application:
    app = web.Application(middlewares=[observe, errors], client_max_size=cfg.limits.body_max_bytes)
    app[STUB] = pb_grpc.SquallStub(channel)
    app[INVOKES] = InvokeStream(app[STUB])   # the hot path: one stream, not a call per invoke

    async def close_stream(app: web.Application) -> None:
        await app[INVOKES].close()
    app.on_cleanup.append(close_stream)
    app[CONFIG] = cfg
    app[METRICS] = metrics or EdgeMetrics()
    for method, path, handler, _ in routes():
        app.router.add_route(method, path, handler)
    return app
