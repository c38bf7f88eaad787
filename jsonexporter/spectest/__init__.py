"""`jsonexporter test`: unit tests for specs, in the vocabulary of `promtool test rules`. A test file
names a spec, and per test a module, the saved answers of its endpoints and the series expected."""

from jsonexporter.spectest.load import Case, Loaded, Suite, load_suite
from jsonexporter.spectest.run import compare, run_files

__all__ = ["Case", "Loaded", "Suite", "compare", "load_suite", "run_files"]
