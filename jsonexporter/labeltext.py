"""JSON values as label values, one rule for the labels extracted from answers and for the
states a spec declares, so that a state written `1.0` in YAML matches `1` in an answer."""

from __future__ import annotations

import json
from typing import Any


def label_text(raw: Any) -> str:
    """A JSON value as a label value: integers exactly, booleans as true/false, null as empty."""
    if type(raw) is str:
        return raw
    if raw is None:
        return ""
    if raw is True or raw is False:
        return "true" if raw else "false"
    if type(raw) is int:
        return str(raw)
    if type(raw) is float:
        if raw.is_integer() and abs(raw) < 1e15:
            return str(int(raw))
        return repr(raw)
    return json.dumps(raw, separators=(",", ":"), ensure_ascii=False)
