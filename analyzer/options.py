"""Command-line values shared by every subcommand that decodes logs."""

from __future__ import annotations

from analyzer.formats import FormatSet, default_formats
from analyzer.inputs import load_log_format


def log_formats(value: str | None) -> FormatSet:
    """Istio's and Envoy's default formats, plus ``--log-format`` (a format string, a JSON format
    object, or ``@file`` holding either) tried first."""
    formats = default_formats()
    return formats if value is None else formats.with_formats(load_log_format(value))
