"""The `squall` command (console script)."""
from __future__ import annotations

import sys

from squall.stack import main as stack_main


def main() -> int:
    return stack_main(sys.argv[1:])
