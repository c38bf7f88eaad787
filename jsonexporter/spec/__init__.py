"""The spec language: loading with marks, schema, semantic checks and the frozen model."""

from jsonexporter.spec.load import load_spec, load_text, load_texts, parse_duration
from jsonexporter.spec.model import Endpoint, JsonBody, Level, Metric, Module, Output, Parameter, Spec
from jsonexporter.spec.problems import Problem, SpecError, format_path
from jsonexporter.spec.sources import SpecFileError, read_spec_files, read_spec_text

__all__ = [
    "Endpoint", "JsonBody", "Level", "Metric", "Module", "Output", "Parameter", "Problem", "Spec",
    "SpecError", "SpecFileError", "format_path", "load_spec", "load_text", "load_texts", "parse_duration", "read_spec_files",
    "read_spec_text",
]
