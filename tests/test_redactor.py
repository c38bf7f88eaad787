"""The Redactor's matcher against the way it used to be built (one `re` alternation of every form,
the longest first), and its bounds: a budget for learned values, never forgetting those in use."""

from __future__ import annotations

import gc
import re
from secrets import token_urlsafe

from hypothesis import given, settings
from hypothesis import strategies as st

from jsonexporter.secrets import (
    CUT,
    MAX_CUT_LOOKBACK,
    MIN_BARE_LENGTH,
    REDACTED,
    WITHHELD,
    HoldRefused,
    Redactor,
    _forms,
    _quoted,
    cut_short,
    redact_patterns,
)


class _Reference:
    """The Redactor as it was: every form of every value in one alternation, recompiled on each change;
    and as it is since: occurrences that overlap the one hidden last hidden with it."""

    def __init__(self, values: set[str]) -> None:
        forms = {f for v in values for f in _forms(v) if f}
        self.pattern = re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))) if forms else None
        self.heads: dict[str, list[str]] = {}
        for f in forms:
            if len(f) > MIN_BARE_LENGTH:
                self.heads.setdefault(f[:MIN_BARE_LENGTH], []).append(f)
        self.longest = min(max(map(len, forms), default=0), MAX_CUT_LOOKBACK)

    @staticmethod
    def kept(value: str) -> list[str]:
        """The forms of `value` a Redactor keeps when it learns it."""
        value = value.strip()
        return list(dict.fromkeys(f for f in _forms(value) if f)) if value and value not in REDACTED else []

    def __call__(self, text: str, mark: str = REDACTED) -> str:
        if self.pattern is not None:
            out: list[str] = []
            done = 0
            for start in range(len(text)):
                if (m := self.pattern.match(text, start)) is None:  # the longest form at `start`: they are tried longest first
                    continue
                if start >= done:
                    out += [text[done:start], _quoted(m[0], mark)]
                    done = m.end()
                elif m.end() > done:
                    done = m.end()
            text = "".join([*out, text[done:]])
            if CUT in text:
                text = cut_short(text, mark, self.heads, self.longest)  # the cut rule as the Redactor applies it, on the heads built the old way
        return redact_patterns(text, mark)


# few letters, so that values overlap, share beginnings and hold one another; and what forms escape
_LETTERS = "ab'\"&<% é\\\n"
_values = st.lists(st.text(_LETTERS, min_size=1, max_size=12), min_size=1, max_size=6, unique=True)


@st.composite
def _texts_with_forms(draw: st.DrawFn) -> tuple[list[str], str]:
    values = draw(_values)
    pieces = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            value = draw(st.sampled_from(values))
            form = draw(st.sampled_from(list(dict.fromkeys(_forms(value)))))
            cut = draw(st.integers(1, len(form)))
            pieces.append(form if draw(st.integers(0, 4)) else form[:cut] + CUT)  # now and then a form cut short
        else:
            pieces.append(draw(st.text(_LETTERS + CUT + "x=@:/", max_size=10)))
    return values, "".join(pieces)


@settings(max_examples=400, deadline=None)
@given(_texts_with_forms(), st.sampled_from([REDACTED, "&lt;redacted&gt;"]))
def test_the_redactor_redacts_as_one_alternation_of_every_form_longest_first(case: tuple[list[str], str], mark: str) -> None:
    values, text = case
    learned, known = values[::2], values[1::2]
    redact = Redactor(known)
    for value in learned:
        redact.learn(value)
    reference = _Reference({v.strip() for v in learned if v.strip() and v.strip() not in REDACTED} | {v for v in known if v not in REDACTED})
    assert redact(text, mark) == reference(text, mark)


@settings(max_examples=100, deadline=None)
@given(_texts_with_forms())
def test_the_redactor_looks_only_for_the_values_it_keeps_after_forgetting(case: tuple[list[str], str]) -> None:
    values, text = case
    redact = Redactor(budget=0)
    owner = _Owner()
    redact.hold(owner, "values", values)
    assert redact(text) == _Reference({v.strip() for v in values if v.strip() and v.strip() not in REDACTED})(text)
    redact.release(owner)  # no longer in use, and the budget is 0: all forgotten but the last one released
    redact.budget = 10**6
    redact.learn(values[-1])
    held = [v for v in dict.fromkeys(v.strip() for v in values) if _Reference.kept(v)]  # in the order hold() took them
    kept = held[-1:] + [v.strip() for v in values[-1:] if _Reference.kept(v)]
    assert redact.learned_chars == sum(len(f) for v in set(kept) for f in _Reference.kept(v))
    assert redact(text) == _Reference(set(kept))(text)


class _Owner:
    """What holds values: a login session, a token source, a client configuration."""


def test_values_in_use_are_kept_beyond_the_budget_and_forgotten_oldest_first_once_released() -> None:
    redact = Redactor(budget=2_000)
    sessions = [_Owner() for _ in range(8)]
    for i, session in enumerate(sessions):  # 8 sessions x 4 values of 100 characters: 3,200 characters and more of forms
        redact.hold(session, "login", [f"session-{i}-value-{j}-" + "x" * 80 for j in range(4)])
    for i in range(50):  # newer values, not in use, learned after them
        redact.learn(f"unpinned-{i:03d}-" + "y" * 80)
    assert all(redact(f"session-{i}-value-{j}-" + "x" * 80) == REDACTED for i in range(8) for j in range(4))
    redact.release(sessions[0])
    del sessions[1]
    gc.collect()
    redact.learn("one-more-" + "z" * 80)  # over the budget: what is not in use goes, the least recently used first
    assert redact("session-0-value-0-" + "x" * 80) != REDACTED and redact("session-1-value-0-" + "x" * 80) != REDACTED
    assert redact("session-2-value-0-" + "x" * 80) == REDACTED
    assert redact("one-more-" + "z" * 80) == REDACTED


def test_bounded_holds_stop_at_the_held_budget_and_hold_nothing_of_what_they_refuse() -> None:
    """The values of login sessions grow with the targets probed: a bounded hold beyond `held_budget` is
    refused whole, and the values in use are never forgotten to make room."""
    redact = Redactor(held_budget=50_000)
    redact.hold(_Owner(), "secret", [token_urlsafe(60_000)])  # a spec's secret: counted, never refused
    assert redact.held_chars > 50_000
    redact = Redactor(held_budget=1_000_000)
    sessions: list[tuple[_Owner, list[str]]] = []
    refused = 0
    for _ in range(64):  # 64 sessions x 8 values of 4,096 characters (session tokens share no grams)
        values = [token_urlsafe(3072) for _ in range(8)]
        session = _Owner()
        try:
            redact.hold(session, "login", values, bounded=True)
        except HoldRefused as exc:
            refused += 1
            assert not any(v[:20] in str(exc) for v in values)
            assert all(redact(v) == v for v in values)  # nothing of it held: it must not be used
            continue
        sessions.append((session, values))
    assert sessions and refused
    assert redact.held_chars <= 1_000_000 and redact.learned_chars <= 1_000_000
    assert all(redact(v) == REDACTED for _, values in sessions for v in values)  # in use: all still hidden
    redact.hold(sessions[0][0], "login", sessions[0][1], bounded=True)  # what it holds already takes no more room
    del sessions[0]
    gc.collect()
    redact.hold(_Owner(), "login", [token_urlsafe(3072)], bounded=True)  # a session gone makes room


def test_a_holder_that_reads_a_rotated_file_releases_the_old_value() -> None:
    redact = Redactor(budget=0)
    clients = _Owner()
    redact.hold(clients, "secret token", ["old-file-token"])
    redact.hold(clients, "secret token", ["new-file-token"])
    redact.learn("an-oauth2-token")  # the budget is 0: what is not in use goes, but the one learned last
    assert redact("old-file-token new-file-token an-oauth2-token") == f"old-file-token {REDACTED} {REDACTED}"


def test_a_text_repeating_what_the_values_repeat_is_withheld_whole_not_searched_for_minutes() -> None:
    """Every lookup of `abab…` hits each value `abab…x`; checking them all took over 100 s."""
    redactor = Redactor()
    for k in range(200, 500):
        redactor.learn("ab" * k + "x")
    text = "ab" * 500_000
    shown = redactor(text)
    assert "abab" not in shown and WITHHELD in shown
    assert redactor("a line with ab" * 3 + "ab" * 250 + "x in it") == "a line with aba line with aba line with <redacted> in it"  # others still redacted


def test_overlapping_values_are_hidden_together_neither_in_part() -> None:
    assert Redactor({"passwordAAAA", "AAAABBBBCCCC"})("x passwordAAAABBBBCCCC y") == "x <redacted> y"


def test_a_probes_value_holding_a_value_of_the_process_is_hidden_whole() -> None:
    """The process's values and the probe's are looked for together: neither hides part of the other."""
    process = Redactor({"s3cr3tSpec"})
    probe = Redactor({"XYZ-s3cr3tSpec-tail", "mypass_s3cr3tSpec"}, parent=process)
    assert probe("echo XYZ-s3cr3tSpec-tail and mypass_s3cr3tSpec, s3cr3tSpec") == "echo <redacted> and <redacted>, <redacted>"


def test_a_text_of_many_cuts_is_looked_at_once_per_character() -> None:
    """Each cut was looked back from as far as the longest value, whatever cut came before it: 100,000
    cuts after a value's beginning took 27 s; now each character is looked at for one cut."""
    secret = "s" + "x" * 2000
    redactor = Redactor({secret})
    text = ("sxxx" + CUT) * 25_000
    assert redactor(text) == ("<redacted>" + CUT) * 25_000
    assert redactor("a " + secret[:600] + CUT + " b") == "a <redacted>" + CUT + " b"


_long_values = st.lists(st.text(_LETTERS, min_size=MIN_BARE_LENGTH, max_size=9), min_size=1, max_size=12, unique=True)


@settings(max_examples=300, deadline=None)
@given(_long_values, st.data(), st.integers(0, 11), st.booleans())
def test_whether_a_text_holds_a_known_value_is_what_the_alternation_of_every_form_finds(
        values: list[str], data: st.DataObject, split: int, look_between: bool) -> None:
    """`finds` (whether a chunk of label values goes element by element): a few forms are each looked for
    whole (only those holding no other), many (a dozen values: beyond _FEW_FORMS) by the lookups of
    `_Forms.find`; the forms looked for follow what is learned (after a first look) and forgotten."""
    pieces = data.draw(st.lists(st.sampled_from([f for v in values for f in _forms(v)]) | st.text(_LETTERS + "x", max_size=6), max_size=6))
    text = "".join(pieces)
    redact = Redactor(budget=10**6)
    for i, value in enumerate(values):
        if i == split and look_between:
            redact.finds(text)  # what it looks for, found once
        redact.learn(value)
    reference = _Reference({v.strip() for v in values if _Reference.kept(v)})
    assert redact.finds(text) == (reference.pattern is not None and reference.pattern.search(text) is not None)
    redact.budget = 0  # all forgotten but the last learned
    redact.learn("zzzz")
    assert redact.finds(text) == ("zzzz" in text)
