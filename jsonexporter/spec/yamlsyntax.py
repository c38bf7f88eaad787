"""PyYAML's syntax errors in a user's words, at the line the user has to change.

PyYAML reports what its parser expected ("mapping values are not allowed here", "expected <block
end>, but found '?'"), at the place where it gave up; the mistake is often elsewhere: the opening
quote of a string that is never closed, the line above that lacks its `:`. The marks and the text
around them are enough to tell the usual mistakes apart.

No message made here shows text of the source: PyYAML quotes what it found (an alias's or anchor's
name, a tag handle, the character it stopped at), and at a credential's place that text is the
credential. A password written without quotes that starts with `*`, `&` or `!` is an alias, an anchor or
a tag to YAML, never a value the Redactor can learn, so the message says which kind of token is at its
line:col instead (`without_source`).
"""

from __future__ import annotations

import re

import yaml

_KEY_LINE = re.compile(r"^(\s*(?:-\s+)*)([^\s#:-][^:#]*?|\"[^\"]*\"|'[^']*'):(\s|$)")
_FOUND = re.compile(r"found character '(.*)' that cannot start any token")
_UNCLOSED = re.compile(r"expected ',' or '([\]}])', but got '(.*)'")
# what PyYAML quotes: a repr of the source's text, or of one of its own token ids
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
# the ids of PyYAML's tokens, its own words ('<scalar>'; a parser's ',' or ':'), never the source's text
_TOKEN_ID = re.compile(r"<[a-z ]+>|[\[\]{}?:,-]")
_NOT_SHOWN = "(not shown)"
# the token PyYAML was scanning when it stopped (its context), and what to write instead
_SCANNED = {
    "an alias": "`*` starts an alias, whose name is letters, digits, `-` and `_`: a value that starts with `*` is written in quotes",
    "an anchor": "`&` starts an anchor, whose name is letters, digits, `-` and `_`: a value that starts with `&` is written in quotes",
    "a tag": "a tag written wrongly (`!` starts a tag): nothing is made from tags; a value that starts with `!` is written in quotes",
    "a directive": "a directive (`%` at the start of a line): a spec has none; a value that starts with `%` is written in quotes",
    "a block scalar": "after `|` or `>` come only `-` or `+` and an indentation digit, then a comment or the end of the line: "
                      "the text goes on the lines under it, or the whole value in quotes",
}


def syntax_error(exc: yaml.MarkedYAMLError, text: str) -> tuple[int, int, str]:
    """(line, column, message) for a YAML syntax error, 1-based."""
    lines = text.splitlines()
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem, context = exc.problem or "", exc.context or ""
    at = _line(lines, line)
    indent = len(at) - len(at.lstrip(" "))
    lead = at[: len(at) - len(at.lstrip(" \t"))]
    if "\t" in lead:  # first: a tab in the indentation makes PyYAML fail in many ways
        return line, lead.index("\t") + 1, "a tab in the indentation: YAML indents with spaces only"
    found = _FOUND.search(problem)
    if found:
        if found.group(1) == "\\t":
            return line, col, "a tab here: YAML separates with spaces only"
        return line, col, ("a value cannot start with this character (YAML reserves `@` and `` ` ``, and `%` starts a directive): "
                           "put the whole value in quotes")
    if "scanning a quoted scalar" in context and exc.context_mark is not None and "end of stream" in problem:
        start = exc.context_mark
        quote = text[start.index : start.index + 1] or '"'
        inner = "\\\"" if quote == '"' else "''"
        return start.line + 1, start.column + 1, f"unclosed quote: this {quote} has no closing {quote} (a {quote} inside the string is written {inner})"
    if "unknown escape character" in problem:
        # at the backslash, not at the letter after it
        message = ("unknown escape in a double-quoted string (a backslash before a character that YAML gives no meaning): "
                   "write \\\\ for a backslash, or use single quotes, where a backslash is just a backslash")
        return line, max(col - 1, 1), message
    if "double-quoted scalar" in context and "hexadecimal numbers" in problem:
        return line, col, "an escape with too few hexadecimal digits in a double-quoted string (\\x takes 2, \\u 4, \\U 8)"
    if problem.startswith("found undefined alias"):
        return line, col, ("an alias (`*name`) of no anchor (`&name`) written above it: "
                           "a value that starts with `*` is written in quotes")
    if context.startswith("found duplicate anchor") and exc.context_mark is not None:
        first = exc.context_mark
        return line, col, (f"an anchor (`&name`) of the name of the anchor at line {first.line + 1}:{first.column + 1}: "
                           "each anchor has its own name; a value that starts with `&` is written in quotes")
    scanned = re.match(r"while (?:scanning|parsing) (an? [a-z ]+)$", context)
    if scanned and scanned.group(1) in _SCANNED:
        return line, col, _SCANNED[scanned.group(1)]
    if "undefined tag handle" in problem:
        return line, col, _SCANNED["a tag"]
    unclosed = _UNCLOSED.search(problem)
    if unclosed and exc.context_mark is not None:
        bracket, got = unclosed.group(1), unclosed.group(2)
        opening = "{" if bracket == "}" else "["
        start = exc.context_mark
        if got == "<stream end>" or mark is None or mark.line > start.line:
            return start.line + 1, start.column + 1, f"this {opening!r} is not closed: {bracket!r} expected before line {line}"
        return line, col, f"expected ',' or {bracket!r} here, inside the {opening}…{bracket} that starts at line {start.line + 1}"
    if problem == "mapping values are not allowed here":
        return _colon_problem(lines, line, col)
    if "could not find expected ':'" in problem and exc.context_mark is not None:
        start = exc.context_mark
        return start.line + 1, start.column + 1, "a key without ':' (write `key: value`), or a line that is not aligned with the keys around it"
    if context.startswith(("while parsing a block mapping", "while parsing a block collection")) and col == indent + 1:
        return line, col, _indentation(lines, line, col)
    if problem == "but found another document":
        return line, col, "a second document (`---`): a spec is one YAML document"
    if problem == "sequence entries are not allowed here":
        return line, col, "a list entry ('- ') after a key that has a value: a list goes on the lines under a `key:` that has no value"
    # a parser's problem names the token it found by its id; a scanner's quotes the source's character
    found_token = re.search(r"but (?:found|got) '(.*)'$", problem) if isinstance(exc, yaml.parser.ParserError) else None
    if found_token and found_token.group(1) == "<scalar>":
        return line, col, "unexpected text after a value: put the whole value in quotes"
    if found_token and _TOKEN_ID.fullmatch(found_token.group(1)):
        return line, col, f"unexpected {_token(found_token.group(1))} here"
    return line, col, _tokens(without_source(" ".join(filter(None, [context, problem])))) or "invalid YAML"


def without_source(message: str) -> str:
    """A message of PyYAML with each text it quotes from the source replaced by _NOT_SHOWN; the ids of
    its tokens ('<block end>') are its own words and stay."""
    return _QUOTED.sub(lambda m: m[0] if re.fullmatch(r"<[a-z ]+>", m[0][1:-1]) else _NOT_SHOWN, message)


_TOKENS = {"<scalar>": "text", "<block mapping start>": "a key", "<block sequence start>": "a list entry", "?": "a key",
           "<block end>": "the end of a block", "<stream end>": "the end of the file", "<document start>": "the start of a document",
           "<flow mapping start>": "'{'", "<flow sequence start>": "'['"}


def _token(name: str) -> str:
    return _TOKENS.get(name, repr(name))


def _tokens(message: str) -> str:
    """PyYAML's token names in a message, in words."""
    return re.sub(r"'(<[a-z ]+>)'", lambda m: _token(m.group(1)), message)


def _line(lines: list[str], number: int) -> str:
    return lines[number - 1] if 0 < number <= len(lines) else ""


def _previous(lines: list[str], number: int) -> tuple[int, str] | None:
    """The nearest line above `number` with content (not blank, not only a comment)."""
    for n in range(number - 1, 0, -1):
        text = lines[n - 1]
        if text.strip() and not text.lstrip().startswith("#"):
            return n, text
    return None


def _key_column(text: str) -> int:
    """The column of a line's key: after its indentation and any `- ` of sequence entries."""
    match = re.match(r"^(\s*(?:-\s+)*)", text)
    return (len(match.group(1)) if match else 0) + 1


def _open_columns(lines: list[str], line: int) -> dict[int, tuple[str, int]]:
    """Where the lines above that `line` can line up with start: column -> ("key" or "-", line),
    from the nearest line up through each less indented one."""
    columns: dict[int, tuple[str, int]] = {}
    lowest = None
    for n in range(line - 1, 0, -1):
        text = lines[n - 1]
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        first = len(text) - len(text.lstrip(" ")) + 1
        if lowest is not None and first >= lowest:
            continue
        lowest = first
        for dash in re.finditer(r"-\s+", text[first - 1 : _key_column(text) - 1]):
            columns.setdefault(first + dash.start(), ("-", n))
        columns.setdefault(_key_column(text), ("key", n))
    return columns


def _indentation(lines: list[str], line: int, col: int) -> str:
    columns = _open_columns(lines, line)
    entry = _line(lines, line).lstrip().startswith("- ")
    if col in columns:
        kind, number = columns[col]
        if kind == "-" and not entry:
            return f"bad indentation: this line lines up with the '- ' of line {number}, not with the keys of that entry"
        if kind == "key" and entry:
            return (f"a list entry among the keys of the mapping of line {number}: "
                    "a list goes on the lines under a `key:` that has no value")
        return "bad indentation: this line does not line up with the lines above it"
    lower, higher = [c for c in columns if c < col], [c for c in columns if c > col]
    if lower and higher:
        return f"bad indentation: this line starts at column {col}, between the columns {max(lower)} and {min(higher)} of the lines above"
    if lower:
        return f"bad indentation: this line starts at column {col}, deeper than the lines above (column {max(lower)})"
    return f"bad indentation: this line starts at column {col}, less deep than the lines above"


def _colon_problem(lines: list[str], line: int, col: int) -> tuple[int, int, str]:
    """`: ` where PyYAML was reading a plain value: a colon inside a value (`help: a: b`), a line
    indented deeper than its mapping, or a key on the line above without its `:`."""
    text = _line(lines, line)
    key = _KEY_LINE.match(text)
    if key is not None and key.end() < col:
        return line, col, "a ': ' inside an unquoted value: put the value in quotes"
    above = _previous(lines, line)
    first = len(text) - len(text.lstrip(" ")) + 1
    if above is not None and not _KEY_LINE.match(above[1]) and _key_column(above[1]) == first:
        number, previous = above
        return number, _key_column(previous), "a key without ':' (write `key: value`)"
    if above is not None:
        return line, first, _indentation(lines, line, first)
    return line, col, "a ': ' inside an unquoted value: put the value in quotes"
