"""The configuration reference, generated from squall/config.py (each field's comment is its
documentation) so README's table cannot drift: `python -m squall.settings_doc` prints it, and a
test checks README.md carries exactly this table between its settings markers."""
from __future__ import annotations

import ast
import dataclasses
import inspect

from squall import config

BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def _comments(cls: type) -> dict[str, str]:
    """Field name -> its comment: the lines just above it, or, for a field written right under
    another (no comment, no blank line between), the comment of that group."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    out: dict[str, str] = {}
    previous = ""
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            notes, i = [], node.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#"):
                notes.insert(0, lines[i].strip().lstrip("#").strip())
                i -= 1
            grouped = not notes and lines[node.lineno - 2].strip() and previous
            out[node.target.id] = previous if grouped else " ".join(notes)
            previous = out[node.target.id]
    return out


def _default(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "(empty)"
    if value == "":
        return "(empty)"
    text = str(value)
    return text.replace(str(config.REPO_ROOT), "<repo>")


def markdown() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for section in dataclasses.fields(config.SquallConfig):
        cls = section.type if isinstance(section.type, type) else getattr(config, section.type)
        notes = _comments(cls)
        defaults = cls()
        for f in dataclasses.fields(cls):
            name = f"SQUALL_{section.name.upper()}_{f.name.upper()}"
            meaning = notes.get(f.name, "").replace("|", "\\|")
            rows.append(f"| `{name}` | `{_default(getattr(defaults, f.name))}` | {meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown())
