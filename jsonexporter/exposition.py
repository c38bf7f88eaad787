"""Series to Prometheus text format 0.0.4 and OpenMetrics 1.0.0.

A direct writer, byte-identical to prometheus_client's `generate_latest` for the same metric
families, with four deliberate differences: integral values are printed exactly (`1655371`,
not `1.655371e+06`), OpenMetrics timestamps never in exponent form, a CR in a label value or
help text is written as a line break (`\n`), not raw, and a lone surrogate in them as its JSON
escape (`\\ud800`: prometheus_client fails to encode it). Label pairs must arrive sorted by name, as
prometheus_client sorts them.
"""

from __future__ import annotations

import functools
import math
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.utils import floatToGoString

from jsonexporter.names import family_name, text_name
from jsonexporter.slices import RENDER, collected, turn

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float, float | None]  # sample name, sorted labels, value, timestamp (s)
Part = str | bytes | Sample  # sample lines already written (as text, or in UTF-8: extract's kept lines), or a sample to write

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
EXACT_LIMIT = 1e15  # below this every integral float is exact and shorter than Go's %g form
# Characters per piece of the rendering, about: an answer up to the size the server sends in one write
# (server.WRITTEN_WHOLE_BYTES) is one piece, so that it is not joined again from pieces (56 KB of bench/'s
# answer: 120 KB, copied once less); a bigger one is written piece by piece, each let go once sent
_PIECE = 1 << 18
try:  # ISA-L's deflate (the isal package): gzip level 1 4.4 times faster than zlib's, a little smaller (README, Dependencies)
    from isal import isal_zlib

    _compressobj: Callable[[int, int, int], Any] = isal_zlib.compressobj
except ImportError:  # no isal for this platform: zlib's, the same gzip stream format
    _compressobj = zlib.compressobj


@dataclass(slots=True)
class Family:
    """One metric family as the user named it (`x_total` for counters, `x_info` for info).

    Extraction writes the sample lines of a family as it finds them (`sample_line`), so that
    rendering only joins them: its parts are those lines (a part may hold many), or samples
    left to the writer, those with a timestamp, which is written differently per format."""

    name: str
    type: str  # gauge, counter, untyped, info, stateset, histogram, summary
    help: str
    parts: list[Part] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)  # the label texts of its series (`labels_text`), for duplicates
    # `keys` is a chunk's own set of label texts (extract._take_keys), kept across probes: copied before it is added to
    shared_keys: bool = False


@dataclass(frozen=True, slots=True)
class Template:
    """The text of families whose lines' values are left out, in both formats: the pieces between the values."""

    text: tuple[str, ...]
    openmetrics: tuple[str, ...]


def template(families: Iterable[tuple[str, str, str, Iterable[str]]]) -> Template:
    """The template of families (name, type, help, what each of its lines writes before its value: `name{labels} `)."""
    listed = [(name, family_type, help_text, tuple(prefixes)) for name, family_type, help_text, prefixes in families]

    def pieces(header: Callable[[str, str, str], str]) -> tuple[str, ...]:
        out, literal = [], ""
        for name, family_type, help_text, prefixes in listed:
            literal += header(name, family_type, help_text)
            for prefix in prefixes:
                out += [literal + prefix, ""]  # "": a value's place
                literal = "\n"
        return (*out, literal)

    return Template(pieces(_text_header_of), pieces(_openmetrics_header_of))


@dataclass(slots=True)
class Written(Family):
    """Families written beforehand (the probe's own metrics, probe.py): the template's pieces with `values`
    between them, for the text of many families in one join. Its name, type and help are the last family's."""

    template: Template = field(default_factory=lambda: Template(("",), ("",)))
    values: list[str] = field(default_factory=list)

    def text(self, openmetrics: bool) -> str:
        row = list(self.template.openmetrics if openmetrics else self.template.text)
        row[1::2] = self.values  # raises when they are not as many as the places
        return "".join(row)


def format_value(value: float) -> str:
    if value.is_integer():
        if -EXACT_LIMIT < value < EXACT_LIMIT:
            return str(int(value))
    elif -math.inf < value < 1e6:  # where Go's %g and Python's repr agree (not NaN)
        return repr(value)
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def format_bound(value: float) -> str:
    """An `le` or `quantile` label value as prometheus_client writes it (`0.1`, `1.0`, `+Inf`): the
    canonical form OpenMetrics parsers require of them."""
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def _line_breaks(text: str) -> str:
    """CR LF and a lone CR as LF. Neither format has an escape for CR, and prometheus_client's parsers
    (both formats) split lines at a raw one, rejecting the whole answer (Go's accept it): a CR in text
    is a line break (Windows', old Mac's), which `\\n` writes. Not a space: that would join the lines;
    not U+FFFD: the text is not broken."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


# A lone surrogate (`"\ud800"` in JSON: the json module lets it through, YAML too) has no UTF-8 form
_SURROGATE = re.compile("[\ud800-\udfff]")
# The encoding error handler that writes it as its JSON escape: in UTF-8 a surrogate is the one character
# without a form, and "backslashreplace" spells it `\ud800`
SURROGATES_ESCAPED = "backslashreplace"


def utf8(text: str) -> bytes:
    """`text` in UTF-8, each lone surrogate as its JSON escape (`\ud800`), as the exposition writes label values:
    for what people read of an answer (traces, pages; the CLI's output has the same error handler)."""
    return text.encode("utf-8", SURROGATES_ESCAPED)


def _surrogates_spelled(text: str) -> str:
    """Each lone surrogate as its JSON escape, `\\ud800`: valid UTF-8 that keeps two texts the answer
    told apart apart (U+FFFD or "?" would make `"\\ud800x"` and `"\\ud801x"` one series, which
    Prometheus drops as a duplicate). A text holding that escape itself (a backslash in the answer) is
    then the same series, which the duplicates policy handles as it handles any other."""
    return utf8(text).decode("utf-8") if not text.isascii() and _SURROGATE.search(text) else text


def escape_label_value(value: str) -> str:
    return _line_breaks(_surrogates_spelled(value).replace("\\", r"\\")).replace("\n", r"\n").replace('"', r"\"")


def needs_escape(value: str) -> bool:
    # isascii() reads a flag the string keeps: the surrogate search costs nothing on ASCII texts
    return "\\" in value or "\n" in value or '"' in value or "\r" in value or (not value.isascii() and _SURROGATE.search(value) is not None)


def escaped(value: str) -> str:
    """A label value as it is written between the quotes."""
    return escape_label_value(value) if needs_escape(value) else value


def labels_text(labels: Labels) -> str:
    """`{a="1",b="2"}` for sorted label pairs, "" for none: the same in both formats."""
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{escaped(value)}"' for name, value in labels) + "}"


def sample_line(sample_name: str, labels: str, value: float) -> str:
    """The line of a sample without a timestamp (the same in both formats); `labels` from `labels_text`."""
    return f"{sample_name}{labels} {format_value(value)}\n"


def _sample_text(sample: Sample, openmetrics: bool) -> str:
    sample_name, labels, value, ts = sample
    if ts is None:
        return sample_line(sample_name, labels_text(labels), value)
    if openmetrics:
        return f"{sample_name}{labels_text(labels)} {format_value(value)} {_openmetrics_timestamp(ts)}\n"
    return f"{sample_name}{labels_text(labels)} {format_value(value)} {int(ts * 1000):d}\n"


def _openmetrics_timestamp(ts: float) -> str:
    """Seconds as prometheus_client writes them, but never in exponent form (`1e-05`), which its parser
    misreads (as 1.00000000 s) or rejects; the bound of extraction keeps them below 1e16, where repr has none."""
    text = repr(ts)
    return format(ts, ".9f") if "e" in text else text


def base_name(family: Family) -> str:
    """The OpenMetrics family name: without the `_total` / `_info` that samples carry."""
    return family_name(family.name, family.type)


def _text_header(family: Family) -> str:
    return _text_header_of(family.name, family.type, family.help)


def _openmetrics_header(family: Family) -> str:
    return _openmetrics_header_of(family.name, family.type, family.help)


# The headers of a spec's families are the same at every probe (a 56 KB probe of bench/spec.yml writes 18)
@functools.lru_cache(maxsize=4096)
def _text_header_of(family_name: str, family_type: str, help_text: str) -> str:
    name = text_name(family_name, family_type)
    mtype = "gauge" if family_type in ("info", "stateset") else family_type
    help_text = _line_breaks(_surrogates_spelled(help_text).replace("\\", r"\\")).replace("\n", r"\n")
    return f"# HELP {name} {help_text}\n# TYPE {name} {mtype}\n"


@functools.lru_cache(maxsize=4096)
def _openmetrics_header_of(name: str, family_type: str, help_text: str) -> str:
    base = family_name(name, family_type)
    mtype = "unknown" if family_type == "untyped" else family_type
    help_text = _line_breaks(_surrogates_spelled(help_text).replace("\\", r"\\")).replace("\n", r"\n").replace('"', r"\"")
    return f"# HELP {base} {help_text}\n# TYPE {base} {mtype}\n"


@functools.lru_cache(maxsize=4096)
def _text_header_bytes(family_name: str, family_type: str, help_text: str) -> bytes:
    return _text_header_of(family_name, family_type, help_text).encode("utf-8", "replace")


@functools.lru_cache(maxsize=4096)
def _openmetrics_header_bytes(name: str, family_type: str, help_text: str) -> bytes:
    return _openmetrics_header_of(name, family_type, help_text).encode("utf-8", "replace")


def _chunks(families: Iterable[Family], openmetrics: bool, let_go: bool = False, errors: str = "replace",
            faults: dict[str, Exception] | None = None) -> Iterator[bytes]:
    """The exposition in UTF-8 pieces of about `_PIECE` characters: steps for `encode_pieces`. Parts written
    as UTF-8 (extract's kept lines) go in as they are; the others, texts, are joined and encoded run by run
    (`errors`: their encoding's error handler), so that an answer of texts alone is encoded once, as a whole
    piece. With `let_go`, each family's parts and keys are let go as they are written (see encode_pieces).
    With `faults`, a family whose writing raises what nothing expects (a fault of ours) is left out, its
    exception kept there by its name (for the caller to say: problems.fault), unless a piece of it was given
    already (a family of more than a piece): that raises."""
    out: list[bytes] = []
    texts: list[str] = []  # the run of texts since the last part in UTF-8
    append, write = out.append, texts.append
    size = 0
    header, header_bytes = (_openmetrics_header, _openmetrics_header_bytes) if openmetrics else (_text_header, _text_header_bytes)
    for family in families:
        if isinstance(family, Written):
            text = family.text(openmetrics)
            write(text)
            size += len(text)
            continue
        begun_out, begun_texts, begun_size, given = len(out), len(texts), size, False
        try:
            parts = family.parts
            if parts and type(parts[0]) is bytes:
                if texts:
                    append("".join(texts).encode("utf-8", errors))
                    texts.clear()
                    begun_out, begun_texts = len(out), 0
                append(header_bytes(family.name, family.type, family.help))
            else:
                write(header(family))
            if let_go:
                family.parts, family.keys, family.shared_keys = [], set(), False
            for index, part in enumerate(parts):
                if let_go:
                    parts[index] = ""
                if type(part) is bytes:
                    if texts:
                        if len(out) == begun_out and begun_texts:  # the texts before this family stay apart from its own
                            append("".join(texts[:begun_texts]).encode("utf-8", errors))
                            del texts[:begun_texts]
                            begun_out, begun_texts = len(out), 0
                        append("".join(texts).encode("utf-8", errors))
                        texts.clear()
                    append(part)
                elif type(part) is str:
                    write(part)
                else:
                    part = _sample_text(part, openmetrics)  # type: ignore[arg-type]
                    write(part)
                size += len(part)
                if size >= _PIECE:
                    if texts:
                        append("".join(texts).encode("utf-8", errors))
                        texts.clear()
                    given = True
                    yield b"".join(out)
                    out.clear()
                    size = 0
        except Exception as exc:  # never a GeneratorExit (a BaseException): the caller let go of the pieces
            if faults is None or given:
                raise
            del out[begun_out:]
            del texts[begun_texts:]
            size = begun_size
            faults[family.name] = exc
    if openmetrics:
        write("# EOF\n")
    if texts:
        append("".join(texts).encode("utf-8", errors))
    yield b"".join(out)  # one piece: itself, not a copy


def render_text(families: Iterable[Family], faults: dict[str, Exception] | None = None) -> str:
    """The families in the text format; `faults` as for `_chunks`."""
    # a lone surrogate in a text stays one (the CLI's output and the debug page write it as its escape; tests find it)
    return b"".join(_chunks(families, False, errors="surrogatepass", faults=faults)).decode("utf-8", "surrogatepass")


def render_openmetrics(families: Iterable[Family], faults: dict[str, Exception] | None = None) -> str:
    return b"".join(_chunks(families, True, errors="surrogatepass", faults=faults)).decode("utf-8", "surrogatepass")


def _ranges(header: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """The ranges of an Accept or Accept-Encoding header: (lowercased name, parameters, q-value in 0..1;
    1 when absent or unreadable)."""
    for part in header.split(","):
        name, *rest = part.split(";")
        params = {k.strip().lower(): v.strip() for k, _, v in (p.partition("=") for p in rest)}
        try:
            q = min(max(float(params.get("q", "1")), 0.0), 1.0)
        except ValueError:
            q = 1.0
        yield name.strip().lower(), params, q if q == q else 1.0  # NaN


def wants_openmetrics(accept: str) -> bool:
    """OpenMetrics when the scraper accepts it (version 1 or later, q above 0) at least as much as the text
    format (text/plain, text/*, */*), as prometheus_client's `choose_encoder` does but by q-values:
    `application/openmetrics-text;q=0` refuses it."""
    openmetrics = text = 0.0
    for media, params, q in _ranges(accept):
        if media == "application/openmetrics-text":
            major = params.get("version", "1").split(".")[0]
            if not major.isdigit() or int(major) >= 1:
                openmetrics = max(openmetrics, q)
        elif media in ("text/plain", "text/*", "*/*"):
            text = max(text, q)
    return openmetrics > 0 and openmetrics >= text


def negotiate(accept: str, accept_encoding: str) -> tuple[bool, bool, dict[str, str]]:
    """OpenMetrics or not, gzip or not, and the headers that say so (the caller's own dict): for a probe's
    answer and for the exporter's own metrics (server.handle_metrics) alike."""
    openmetrics, compress, headers = _negotiated(accept, accept_encoding)
    return openmetrics, compress, dict(headers)


# A scraper sends the same Accept and Accept-Encoding at every probe (Prometheus: a list of five media types)
@functools.lru_cache(maxsize=64)
def _negotiated(accept: str, accept_encoding: str) -> tuple[bool, bool, dict[str, str]]:
    openmetrics = wants_openmetrics(accept)
    headers = {"Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE}
    compress = any(name == "gzip" and q > 0 for name, _, q in _ranges(accept_encoding))
    if compress:
        headers["Content-Encoding"] = "gzip"
    return openmetrics, compress, headers


def encode(families: list[Family], accept: str, accept_encoding: str) -> tuple[bytes, dict[str, str]]:
    """Body and headers for a scrape with these Accept and Accept-Encoding headers."""
    openmetrics, compress, headers = negotiate(accept, accept_encoding)
    body = b"".join(_chunks(families, openmetrics))
    if compress:
        body = b"".join(gzip_pieces([body]))
    return body, headers


async def encode_async(families: list[Family], accept: str, accept_encoding: str, deadline: float | None = None) -> tuple[bytes, dict[str, str]]:
    """`encode` on the event loop: `encode_pieces` joined."""
    pieces, headers = await encode_pieces(families, accept, accept_encoding, deadline)
    return b"".join(pieces), headers


async def encode_pieces(families: list[Family], accept: str, accept_encoding: str, deadline: float | None = None,
                        let_go: bool = False, faults: dict[str, Exception] | None = None) -> tuple[list[bytes], dict[str, str]]:
    """`encode`'s body in pieces of about `_PIECE` characters, never joined (a server writes them one
    after the other: server.write_pieces), rendered on the event loop in slices and in turn (see
    slices.py); compressed, each piece is compressed as it is written (ISA-L: 256 Ki characters in about
    0.25 ms, zlib 1 ms), so that the answer's text is never whole in memory beside its compressed form.
    DeadlinePassed (slices.py) when `deadline` passes before the body is written.
    With `let_go` (the caller has no more use for the families), the families' series are let go as
    they are written, emptying them: the series and their written answer are not both whole in memory.
    With `faults`, a family that cannot be written for a fault of ours is left out and said there (`_chunks`)."""
    openmetrics, compress, headers = negotiate(accept, accept_encoding)
    encoded = _chunks(families, openmetrics, let_go, faults=faults)
    async with turn(RENDER, deadline):
        if not compress:
            return await collected(encoded, deadline=deadline), headers
        compressor = _gzip_compressor()
        pieces = await collected(map(compressor.compress, encoded), deadline=deadline)
    pieces.append(compressor.flush())
    return [piece for piece in pieces if piece], headers


def _gzip_compressor(compressobj: Callable[[int, int, int], Any] | None = None) -> Any:
    """A gzip stream at level 1 (16+: its header and trailer)."""
    return (compressobj or _compressobj)(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)


def gzip_pieces(pieces: list[bytes], compressobj: Callable[[int, int, int], Any] | None = None) -> list[bytes]:
    """One gzip stream of the pieces, in pieces: level 1, by ISA-L where the isal package is installed, else
    by zlib (`compressobj`: either module's, for tests). Both let go of the GIL while they work."""
    compressor = _gzip_compressor(compressobj)
    compressed = [compressor.compress(piece) for piece in pieces]
    compressed.append(compressor.flush())
    return [piece for piece in compressed if piece]
