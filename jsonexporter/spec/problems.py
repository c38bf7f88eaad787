"""Problems found in a spec: values that carry their location until the edge prints them."""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from typing import Literal

Path = tuple[str | int, ...]
Severity = Literal["error", "warning"]


def format_path(path: Path) -> str:
    """`("modules", "m", "metrics", 2, "labels", "id")` -> `modules.m.metrics[2].labels.id`."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif out and part.replace("_", "a").isalnum():
            out.append(f".{part}")
        elif out:
            out.append(f"[{part!r}]")
        else:
            out.append(part)
    return "".join(out) or "<root>"


_LINE_BREAKS = str.maketrans({"\n": "\\n", "\r": "\\r", "\x85": "\\x85", "\u2028": "\\u2028", "\u2029": "\\u2029"})


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    column: int
    path: Path
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        # one problem, one line: a message may quote the user's text, line breaks included
        message = self.message.translate(_LINE_BREAKS)
        return f"{self.file}:{self.line}:{self.column}: {format_path(self.path)}: {prefix}{message}"


class SpecError(Exception):
    """A spec that cannot be used; `problems` holds every error and warning found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        super().__init__("\n".join(str(p) for p in errors) or "invalid spec")


def unexpected_failure(file: str, exc: BaseException) -> str:
    """The one line for an exception that loading `file` does not expect (a fault of the exporter's own): see
    `fault`. The commands (cli.py) and a reload (server.load_anew) say it so."""
    return f"{file}: cannot be loaded: {fault(exc)}"


def fault(exc: BaseException) -> str:
    """An exception that we do not expect (a fault of the exporter's own), said by its kind and the last line of
    ours it came through, never its text, which can quote a value (a secret the redaction has not learned, a
    value of the file or of an upstream's answer): for a load (unexpected_failure) and an endpoint's fetch."""
    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    where = ""
    for frame, line in traceback.walk_tb(exc.__traceback__):
        path = os.path.abspath(frame.f_code.co_filename)
        if path.startswith(ours + os.sep):
            where = f" at {os.path.relpath(path, os.path.dirname(ours))}:{line}"
    return f"{type(exc).__name__}{where} (a fault of jsonexporter's own: please report it)"
