"""Squall's Python action proxy: OpenWhisk's action protocol on PROXY_PORT (default 8080).

POST /init {"value": {"name", "main", "code", "binary", "env"}} once, then
POST /run {"value": params, "namespace", "action_name", "activation_id", "deadline", "api_key", ...}
per activation. Every run ends stdout and stderr with the sentinel line, so the invoker can cut
the container's logs per activation. Standard library only: the image carries just python3.
"""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import traceback
import types
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SENTINEL = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"
MAX_BODY = 64 * 1024 * 1024


class InitError(Exception):
    pass


class Action:
    """The one action this container runs; initialized once."""

    def __init__(self) -> None:
        self.main = None
        self.lock = threading.Lock()   # one activation at a time (OpenWhisk's Python concurrency)

    def init(self, value: dict) -> None:
        for key, val in (value.get("env") or {}).items():
            os.environ[str(key)] = val if isinstance(val, str) else json.dumps(val)
        entry = value.get("main") or "main"
        code = value.get("code")
        if not isinstance(code, str) or not code:
            raise InitError("Missing main/no code to execute.")
        namespace = self._load_zip(code) if value.get("binary") else self._load_source(code)
        fn = namespace.get(entry)
        if not callable(fn):
            raise InitError(f"Action failed to generate a main function: '{entry}' is not defined.")
        self.main = fn

    @staticmethod
    def _load_source(code: str) -> dict:
        module = types.ModuleType("__action__")
        try:
            exec(compile(code, "__main__.py", "exec"), module.__dict__)
        except Exception as exc:
            raise InitError(_describe(exc)) from exc
        return module.__dict__

    @staticmethod
    def _load_zip(code: str) -> dict:
        try:
            archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(code)))
        except Exception as exc:
            raise InitError(f"Unable to decompress the action archive: {exc}") from exc
        if "__main__.py" not in archive.namelist():
            raise InitError("Zip file does not include mandatory files.")
        root = tempfile.mkdtemp(prefix="action-")
        archive.extractall(root)
        # A virtualenv shipped in the zip (OpenWhisk's convention) brings the action's packages.
        for site in sorted(_glob_site_packages(os.path.join(root, "virtualenv"))):
            sys.path.insert(0, site)
        sys.path.insert(0, root)
        module = types.ModuleType("__main__action")
        module.__file__ = os.path.join(root, "__main__.py")
        try:
            with open(module.__file__) as f:
                exec(compile(f.read(), module.__file__, "exec"), module.__dict__)
        except Exception as exc:
            raise InitError(_describe(exc)) from exc
        return module.__dict__

    def run(self, body: dict) -> tuple[int, object]:
        """(status, reply): the result as JSON already encoded, or an error to encode."""
        for key, val in body.items():
            if key != "value":
                os.environ[f"__OW_{key.upper()}"] = val if isinstance(val, str) else json.dumps(val)
        params = body.get("value")
        if not isinstance(params, dict):
            params = {}
        try:
            result = self.main(params)
        except Exception as exc:
            traceback.print_exc()
            return 502, {"error": f"An error has occurred: {_describe(exc)}"}
        if not isinstance(result, dict):
            return 502, {"error": "The action did not return a dictionary."}
        try:
            return 200, _compact(result)   # encoded once: the check that it is JSON, and the reply
        except (TypeError, ValueError) as exc:
            return 502, {"error": f"The action did not produce a valid JSON response: {exc}"}


def _compact(doc: object) -> bytes:
    """JSON without spaces: the invoker passes a result on as it is."""
    return json.dumps(doc, separators=(",", ":")).encode()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, InitError) else str(exc)


def _glob_site_packages(venv: str) -> list[str]:
    lib = os.path.join(venv, "lib")
    if not os.path.isdir(lib):
        return []
    return [os.path.join(lib, d, "site-packages") for d in os.listdir(lib)
            if os.path.isdir(os.path.join(lib, d, "site-packages"))]


def _end_logs() -> None:
    # After the action's own output, so everything before the sentinel belongs to this run.
    for stream in (sys.stdout, sys.stderr):
        stream.write(SENTINEL + "\n")
        stream.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"    # keep-alive: the invoker reuses one connection
    action: Action
    init_lock = threading.Lock()

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm and the
        # client's delayed ACK hold the body back ~40 ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args) -> None:   # access logs would pollute the action's logs
        pass

    def _reply(self, status: int, doc: object) -> None:
        data = doc if isinstance(doc, bytes) else _compact(doc)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict | None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return None
        try:
            doc = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def do_POST(self) -> None:
        body = self._body()
        if self.path == "/init":
            self._init(body)
        elif self.path == "/run":
            self._run(body)
        else:
            self._reply(404, {"error": "Not found."})

    def do_GET(self) -> None:
        self._reply(404, {"error": "Not found."})

    def _init(self, body: dict | None) -> None:
        with self.init_lock:
            if self.action.main is not None:
                self._reply(403, {"error": "Cannot initialize the action more than once."})
                return
            value = (body or {}).get("value")
            if not isinstance(value, dict):
                self._reply(403, {"error": "The action failed to initialize: missing or malformed value."})
                return
            try:
                self.action.init(value)
            except InitError as exc:
                sys.stdout.flush()
                sys.stderr.flush()
                self._reply(502, {"error": str(exc)})
                return
            self._reply(200, {"ok": True})

    def _run(self, body: dict | None) -> None:
        if self.action.main is None:
            self._reply(403, {"error": "Cannot run the action: it has not been initialized."})
            return
        if body is None:
            self._reply(400, {"error": "The request body is not a JSON object."})
            return
        with self.action.lock:
            try:
                status, doc = self.action.run(body)
            finally:
                _end_logs()
        self._reply(status, doc)


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    Handler.action = Action()
    server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PROXY_PORT", "8080"))), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
