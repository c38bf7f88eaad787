"""URLs checked as yarl and the resolver will read them, before a request is made of them: the
targets, next pages, Link headers and Locations from outside (upstream/), and a spec's proxy_url (spec/),
each refused with the reason, in words that quote no userinfo."""

from __future__ import annotations

from yarl import URL

from jsonexporter.secrets import MIN_BARE_LENGTH, REDACTED


class UnusableURL(ValueError):
    """A URL that cannot be requested: from outside (a target, a next page, a Link header, a Location) or
    the spec's (a proxy). Its message says why, quoting at most the host and the port: never the userinfo, a credential."""


def checked_url(text: str | URL, base: URL | None = None) -> URL:
    """`text` as a URL (joined to `base` when given); raise UnusableURL when it is none: yarl decodes an IDNA host
    (`xn--…`) only when `.host` is first read, and the resolver encodes it only when connecting (where aiohttp
    lets its UnicodeError through), so an invalid one is found here, not where the URL is used."""
    try:
        url = text if isinstance(text, URL) else URL(text)
        if base is not None:
            url = base.join(url)
        url.host  # noqa: B018 (the decoding is one check)
        if url.raw_host:  # the resolver's encoding another: a label empty or over 63 characters
            url.raw_host.encode("idna")
    except Exception as exc:  # ValueError (UnicodeError among them), TypeError, and yarl's IndexError on `http://[:]@/`
        raise UnusableURL(_unusable_because(str(text), exc)) from None
    return url


_MAX_QUOTED = 80  # of a host or port quoted in a reason: the text is from outside


def _unusable_because(text: str, exc: Exception) -> str:
    """What yarl found wrong with `text`, in words that quote only its host and port."""
    head, slashes, authority = text.partition("//")
    if not slashes or (head and not head.endswith(":")):  # no `scheme://` nor `//`: no authority
        authority = ""
    for end in "/?#":
        authority = authority.partition(end)[0]
    userinfo, _, hostport = authority.rpartition("@")
    if hostport.startswith("["):
        inside, bracket, after = hostport.partition("]")
        host, port = inside + bracket, after[1:]
    else:
        host, _, port = hostport.partition(":")
    message = str(exc).removeprefix("Invalid URL: ")
    if "Port out of range" in message or "port can't be converted" in message:
        return f"its port {_quoted(port)} is not a number from 0 to 65535"
    if isinstance(exc, UnicodeError):
        detail = (message.rpartition("(UnicodeError: ")[2].rstrip(")") or message)[:_MAX_QUOTED]
        what = "an IDNA `xn--` label that decodes to none" if "decoding" in message else "it has no DNS form"
        return f"its host {_quoted(host)} is not a valid name ({what}: {detail})"
    if "NFKC" in message:
        return "its host or userinfo has a character that NFKC normalization turns into one of / ? # @ : %"
    if "IPv" in message:
        return f"its host {_quoted(host)} is not a valid IP address in brackets"
    if not isinstance(exc, ValueError | TypeError):
        return f"yarl cannot read it ({type(exc).__name__})"
    # yarl's other messages quote nothing of the URL; should one start to, its userinfo is still hidden
    for secret in sorted({userinfo, *userinfo.split(":", 1)}, key=len, reverse=True):
        if secret and (secret == userinfo or len(secret) >= MIN_BARE_LENGTH):
            message = message.replace(secret, REDACTED)
    return message


def _quoted(part: str) -> str:
    return repr(part if len(part) <= _MAX_QUOTED else part[:_MAX_QUOTED] + "…")
