"""`squall` user commands, reading the same wskprops as `wsk` (WSK_CONFIG_FILE, else .squall/wskprops):

    squall invoke NAME [-p KEY VALUE ...] [-P params.json] [--async] [--full]
    squall activation list [NAME] [--limit N]
    squall activation get ID | result ID | logs [ID]
    squall activation logs [NAME] --follow      new activations' logs as they complete
    squall deploy manifest.yaml                 packages, actions, sequences, triggers, rules

The manifest is a subset of OpenWhisk's wskdeploy format:

    packages:
      demo:
        inputs: {greeting: hello}             # package parameters
        actions:
          hello: {function: hello.py, runtime: python:3, inputs: {name: world}, web-export: true}
        sequences:
          twice: {actions: "hello, hello"}
        triggers:
          tick: {feed: /whisk.system/alarms/interval, inputs: {minutes: 1}}
        rules:
          on-tick: {trigger: tick, action: hello}

Errors are one line on stderr; the exit code is 1 for an API error, 2 for bad usage.
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path

import requests

from squall import wskprops


class CliError(Exception):
    pass


class Api:
    def __init__(self, props_path: Path):
        try:
            props = wskprops.read(props_path)
        except OSError:
            raise CliError(f"no wskprops at {props_path}: run `make up` first (or set WSK_CONFIG_FILE)") from None
        self.base = props["APIHOST"].rstrip("/") + "/api/v1/namespaces/_"
        self.session = requests.Session()
        self.session.auth = tuple(props["AUTH"].split(":", 1))

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            r = self.session.request(method, self.base + path, timeout=120, **kwargs)
        except requests.RequestException as exc:
            raise CliError(f"cannot reach the API: {exc}") from None
        if r.status_code >= 400 and r.status_code != 502:
            try:
                message = r.json().get("error", r.text)
            except ValueError:
                message = r.text
            raise CliError(f"{method} {path}: {r.status_code} {message}")
        return r


def _value(text: str):
    """As wsk does: a parameter value is JSON if it parses, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


# invoke

def invoke(api: Api, args: argparse.Namespace) -> int:
    params = json.loads(Path(args.param_file).read_text()) if args.param_file else {}
    params.update({k: _value(v) for k, v in args.param or []})
    r = api.call("POST", f"/actions/{args.name}" + ("" if args.no_wait else "?blocking=true"), json=params)
    body = r.json()
    if "response" not in body:
        print(f"ok: invoked {args.name} with id {body['activationId']}")
        return 0
    print(json.dumps(body if args.full else body["response"]["result"], indent=2))
    return 0 if body["response"]["success"] else 1


# activations

def activation(api: Api, args: argparse.Namespace) -> int:
    if args.what == "list":
        query = f"?limit={args.limit}" + (f"&name={args.name_or_id}" if args.name_or_id else "")
        for a in api.call("GET", "/activations" + query).json():
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a["start"] / 1000))
            print(f"{when} {a['activationId']} {a['name']:<30} {a.get('statusCode', '')}")
        return 0
    if args.what == "logs" and args.follow:
        return follow(api, args.name_or_id)
    activation_id = args.name_or_id or _latest(api)
    suffix = {"get": "", "result": "/result", "logs": "/logs"}[args.what]
    doc = api.call("GET", f"/activations/{activation_id}{suffix}").json()
    if args.what == "logs":
        print("\n".join(doc["logs"]))
    else:
        print(json.dumps(doc, indent=2))
    return 0


def _latest(api: Api) -> str:
    listed = api.call("GET", "/activations?limit=1").json()
    if not listed:
        raise CliError("no activations yet")
    return listed[0]["activationId"]


def follow(api: Api, name: str | None, poll_s: float = 0.5) -> int:
    """Print each new activation's logs once it is recorded, until interrupted."""
    seen: set[str] = set()
    since = int(time.time() * 1000) - 1000
    print(f"following {'activations of ' + name if name else 'activations'} (ctrl-c to stop)", flush=True)
    try:
        while True:
            query = f"?docs=true&limit=50&since={since}" + (f"&name={name}" if name else "")
            for a in reversed(api.call("GET", "/activations" + query).json()):
                if a["activationId"] in seen:
                    continue
                seen.add(a["activationId"])
                status = a["response"]["status"]
                print(f"== {a['name']} {a['activationId']} ({status}, {a.get('duration', 0)} ms)", flush=True)
                for line in a.get("logs", []):
                    print(f"   {line}", flush=True)
            time.sleep(poll_s)
    except KeyboardInterrupt:
        return 0


# deploy

def deploy(api: Api, args: argparse.Namespace) -> int:
    import yaml   # only this command needs it
    path = Path(args.manifest)
    try:
        manifest = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    packages = manifest.get("packages")
    if not isinstance(packages, dict) or not packages:
        raise CliError(f"{path}: a manifest needs `packages:` with at least one package")
    for pkg_name, pkg in packages.items():
        pkg = pkg or {}
        _put(api, "packages", pkg_name, {"parameters": _kv(pkg.get("inputs")), "publish": bool(pkg.get("public"))})
        for name, spec in (pkg.get("actions") or {}).items():
            _put(api, "actions", f"{pkg_name}/{name}", _action(path.parent, name, spec or {}))
        for name, spec in (pkg.get("sequences") or {}).items():
            components = [c.strip() for c in str((spec or {}).get("actions", "")).split(",") if c.strip()]
            _put(api, "actions", f"{pkg_name}/{name}", {"exec": {"kind": "sequence", "components": [
                c if c.startswith("/") else f"/_/{pkg_name}/{c}" for c in components]}})
        for name, spec in (pkg.get("triggers") or {}).items():
            spec = spec or {}
            body = {"parameters": _kv(spec.get("inputs"))}
            if spec.get("feed"):
                body["annotations"] = [{"key": "feed", "value": spec["feed"]}]
            _put(api, "triggers", name, body)
        for name, spec in (pkg.get("rules") or {}).items():
            spec = spec or {}
            action = spec.get("action", "")
            _put(api, "rules", name, {"trigger": f"/_/{spec.get('trigger', '')}",
                                      "action": action if action.startswith("/") else f"/_/{pkg_name}/{action}"})
    print(f"ok: deployed {path}")
    return 0


def _kv(values: dict | None) -> list[dict]:
    return [{"key": k, "value": v} for k, v in (values or {}).items()]


def _action(root: Path, name: str, spec: dict) -> dict:
    source = spec.get("function")
    if not source:
        raise CliError(f"action {name}: `function` (a file) is required")
    file = root / source
    try:
        data = file.read_bytes()
    except OSError:
        raise CliError(f"action {name}: cannot read {file}") from None
    runtime = spec.get("runtime") or {".py": "python:3", ".js": "nodejs", ".zip": None}.get(file.suffix)
    if runtime is None:
        raise CliError(f"action {name}: `runtime` is required for {file.name}")
    binary = file.suffix == ".zip"
    annotations = [{"key": k, "value": spec[k]} for k in ("web-export", "raw-http", "final", "conductor") if k in spec]
    body = {"exec": {"kind": runtime, "code": base64.b64encode(data).decode() if binary else data.decode(),
                     "binary": binary}, "parameters": _kv(spec.get("inputs")), "annotations": annotations}
    if spec.get("main"):
        body["exec"]["main"] = spec["main"]
    limits = {k: spec[k] for k in ("timeout", "memory", "logs", "concurrency") if k in spec}
    if limits:
        body["limits"] = limits
    return body


def _put(api: Api, collection: str, name: str, body: dict) -> None:
    api.call("PUT", f"/{collection}/{name}?overwrite=true", json=body)
    print(f"  {collection[:-1]} {name}", flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="squall", add_help=False)
    sub = p.add_subparsers(dest="command", required=True)
    inv = sub.add_parser("invoke", help="invoke an action (blocking by default)")
    inv.add_argument("name")
    inv.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"))
    inv.add_argument("-P", "--param-file")
    inv.add_argument("--async", dest="no_wait", action="store_true", help="do not wait: print the activation id")
    inv.add_argument("--full", action="store_true", help="the whole activation, not only the result")
    act = sub.add_parser("activation", help="activations: list, get, result, logs [--follow]")
    act.add_argument("what", choices=["list", "get", "result", "logs"])
    act.add_argument("name_or_id", nargs="?")
    act.add_argument("--limit", type=int, default=30)
    act.add_argument("--follow", "-f", action="store_true")
    dep = sub.add_parser("deploy", help="deploy a manifest (packages, actions, sequences, triggers, rules)")
    dep.add_argument("manifest")
    return p


COMMANDS = ("invoke", "activation", "deploy")


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        api = Api(wskprops.default_path())
        return {"invoke": invoke, "activation": activation, "deploy": deploy}[args.command](api, args)
    except CliError as exc:
        print(f"squall: {exc}", file=sys.stderr)
        return 1
