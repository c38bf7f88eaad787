"""The spec language: loading with marks, schema, semantic checks and the frozen model."""

from jsonexporter.spec.load import load_spec, load_text, parse_duration, read_spec_text
from jsonexporter.spec.model import Endpoint, JsonBody, Level, Metric, Module, Output, Parameter, Spec
from jsonexporter.spec.problems import Problem, SpecError, format_path

__all__ = [
    "Endpoint", "JsonBody", "Level", "Metric", "Module", "Output", "Parameter", "Problem", "Spec",
    "SpecError", "format_path", "load_spec", "load_text", "parse_duration", "read_spec_text",
]
