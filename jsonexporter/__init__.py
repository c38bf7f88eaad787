"""jsonexporter: a declarative Prometheus exporter for any REST/JSON API."""

__version__ = "0.1.0"
