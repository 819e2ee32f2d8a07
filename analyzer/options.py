"""Command-line values shared by every subcommand that decodes logs."""

from __future__ import annotations

from pathlib import Path

from analyzer.errors import FormatError
from analyzer.formats import FormatSet, default_formats, parse_log_format


def log_formats(value: str | None) -> FormatSet:
    """Istio's and Envoy's default formats, plus ``--log-format`` (a format string, a JSON format
    object, or ``@file`` holding either) tried first."""
    formats = default_formats()
    if value is None:
        return formats
    spec = value
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            spec = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise FormatError(
                f"--log-format {value}: cannot read {path} ({exc.strerror}); give the path of a "
                "file holding the format string or JSON format object."
            ) from exc
    return formats.with_formats(parse_log_format(spec))
