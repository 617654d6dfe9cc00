"""The `squall` command (console script): `squall up|down|status|logs` and `squall admin ...`."""
from __future__ import annotations

import sys

from squall.stack import main as stack_main


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["admin"]:
        from squall.admin import main as admin_main
        return admin_main(argv[1:])
    return stack_main(argv)
