"""Numbers in strings as Prometheus reads them, one rule for every value, timestamp and `to_number`.

Prometheus's parsers read a sample value with Go's strconv.ParseFloat, refusing the hex floats and
`_` digit separators it also takes; Python's float() takes far more (`1_000`, `١٢`, `１２`, spaces).
"""

from __future__ import annotations

import math
import re

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
