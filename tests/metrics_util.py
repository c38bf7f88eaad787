"""Probe output parsed back with prometheus_client's own parser: tests compare values, not text."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from jsonexporter.exposition import Family, render_text

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Series:
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return series


def value(series: Series, name: str, **labels: str) -> float:
    return series[(name, frozenset(labels.items()))]


def names(series: Series) -> set[str]:
    return {name for name, _ in series}


def samples(family: Family) -> list[tuple[str, dict[str, str], float]]:
    """A family's series in their order, as prometheus_client's parser reads its rendering."""
    (parsed,) = text_string_to_metric_families(render_text([family]))
    return [(s.name, s.labels, s.value) for s in parsed.samples]
