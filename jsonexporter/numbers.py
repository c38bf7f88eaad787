"""Numbers in strings as Prometheus reads them, one rule for every value, timestamp and `to_number`.

Prometheus's parsers read a sample value with Go's strconv.ParseFloat, refusing the hex floats and
`_` digit separators it also takes; Python's float() takes far more (`1_000`, `١٢`, `１２`, spaces).
"""

from __future__ import annotations

import math
import re
from typing import Any

from jsonexporter.trace import shorten

# ASCII only, nothing around it
NUMBER = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf(?:inity)?))|(?i:nan)")
INTEGER = re.compile(r"[+-]?[0-9]+")


def parse_number(text: str) -> float:
    """`text` as Prometheus reads a number; ValueError when it is not one, or beyond a 64-bit float
    (Go's ParseFloat gives a range error where Python's float() gives infinity)."""
    if NUMBER.fullmatch(text) is None:
        raise ValueError(f"{shorten(text, 60)} is not a number")
    value = float(text)
    if math.isinf(value) and text[-1] not in "fFyY":  # not spelled Inf or Infinity
        raise ValueError(f"{shorten(text, 60)} is beyond the range of a 64-bit float")
    return value


def _float_or_text(text: str) -> float | str:
    value = float(text)
    return text if math.isinf(value) else value


def _int_or_text(text: str) -> int | str:
    try:
        value = int(text)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        return text
    return text if len(text) > 308 and math.isinf(float(text)) else value


# json.loads's hooks for a JSON number beyond a 64-bit float (`1e400`, 5000 digits): it stays its text, so
# that a rule reading it gets what the string "1e400" gives, parse_number's error for that series, not a
# silent +Inf (json's float()) or an error of the whole answer in Python's words. A call per number: for
# answers orjson refused only (it refuses these), never for the ones it parses.
OUT_OF_RANGE_AS_TEXT: dict[str, Any] = {"parse_float": _float_or_text, "parse_int": _int_or_text}
