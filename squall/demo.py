"""After `make up`: create a sample action over the REST API, invoke it, and say how to go on."""
from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from squall import wskprops
from squall.config import SquallConfig

HELLO = '''def main(args):
    name = args.get("name", "stranger")
    print(f"greeting {name}")
    return {"greeting": f"Hello, {name}!"}
'''


def call(method: str, url: str, auth: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": "Basic " + base64.b64encode(auth.encode()).decode(),
        "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=90) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def main() -> int:
    props = wskprops.read(SquallConfig.from_env().paths.state / "wskprops")
    host, auth = props["APIHOST"], props["AUTH"]
    base = f"{host}/api/v1/namespaces/_/actions/hello"
    status, body = call("PUT", base + "?overwrite=true", auth,
                        {"exec": {"kind": "python:3", "code": HELLO}})
    if status != 200:
        print(f"[squall] creating the sample action failed: {status} {body}", file=sys.stderr)
        return 1
    status, result = call("POST", base + "?blocking=true&result=true", auth, {"name": "Squall"})
    print(f"[squall] invoked sample action 'hello': HTTP {status} {json.dumps(result)}")
    print()
    print(f"  APIHOST={host}")
    print(f"  AUTH={auth}")
    print(f"  (both in {SquallConfig.from_env().paths.state / 'wskprops'}; use WSK_CONFIG_FILE=<that file> with wsk)")
    print()
    print(f"  curl -u '{auth}' -X POST '{base}?blocking=true&result=true' \\")
    print("       -H 'Content-Type: application/json' -d '{\"name\": \"you\"}'")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
