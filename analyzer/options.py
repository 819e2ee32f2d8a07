"""Command-line values shared by every subcommand that decodes logs."""

from __future__ import annotations

import logging
from collections.abc import Callable

from analyzer import correlation_needs
from analyzer.formats import FormatSet, default_formats
from analyzer.inputs import load_log_format

_log = logging.getLogger("wslog.formats")


def log_formats(value: str | None, warn: Callable[[str], None] = _log.warning) -> FormatSet:
    """Istio's and Envoy's default formats, plus ``--log-format`` (a format string, a JSON format
    object, or ``@file`` holding either) tried first. ``warn`` hears of each field correlation
    needs that the given format lacks (by default the ``wslog`` logger, which the exporter
    configures)."""
    formats = default_formats()
    if value is None:
        return formats
    custom = load_log_format(value)
    for warning in correlation_needs.warnings(custom):
        warn(warning)
    return formats.with_formats(custom)
