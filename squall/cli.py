"""The `squall` command (console script): operator commands `squall up|down|status|logs`,
`squall admin ...`, and user commands `squall invoke|activation|deploy` (see squall/usercli.py)."""
from __future__ import annotations

import sys

from squall.stack import main as stack_main


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["admin"]:
        from squall.admin import main as admin_main
        return admin_main(argv[1:])
    from squall import usercli
    if argv[:1] and argv[0] in usercli.COMMANDS:
        return usercli.main(argv)
    return stack_main(argv)
