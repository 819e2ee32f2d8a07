"""Exporter settings: from flags and WSLOG_* environment variables, validated once at start.

Every bad value is reported with the flag it came from and what a good one looks like, all at
once, before anything starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from analyzer.lines import MAX_LINE_BYTES


class SourceKind(StrEnum):
    KUBERNETES = "kubernetes"
    FILES = "files"
    STDIN = "stdin"


class SettingsError(ValueError):
    """One or more settings are invalid; the message lists each with its fix."""


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, value: str) -> Listen:
        match = re.fullmatch(r"\[?([^\]]*)\]?:(\d{1,5})", value.strip())
        if match is None or not 0 <= int(match.group(2)) <= 65535:
            raise SettingsError(
                f"--listen {value!r}: give HOST:PORT, e.g. 0.0.0.0:9090 or 127.0.0.1:0"
            )
        return cls(match.group(1) or "0.0.0.0", int(match.group(2)))


@dataclass(frozen=True)
class PipelineSettings:
    pair_window: timedelta
    clock_skew: timedelta
    max_pending: int
    batch_interval_s: float
    log_format: str | None
    max_line_bytes: int = MAX_LINE_BYTES
    max_buffered_bytes: int = 32 << 20


@dataclass(frozen=True)
class ExporterSettings:
    source: SourceKind
    listen: Listen
    max_series: int
    pipeline: PipelineSettings


def check(problems: list[str], ok: bool, message: str) -> None:
    if not ok:
        problems.append(message)


def validate_pipeline(
    pair_window_s: float, clock_skew_s: float, max_pending: int, batch_interval_s: float
) -> list[str]:
    problems: list[str] = []
    check(problems, 0 < pair_window_s <= 3600, "--pair-window must be in (0, 3600] seconds")
    check(problems, 0 <= clock_skew_s <= 300, "--clock-skew must be in [0, 300] seconds")
    check(problems, max_pending >= 100, "--max-pending must be at least 100 entries")
    check(problems, 0 < batch_interval_s <= 60, "--batch-interval must be in (0, 60] seconds")
    return problems


def raise_if(problems: list[str]) -> None:
    if problems:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems))
