"""The entry point behaves as a newcomer expects: ``--version``, ``-h`` everywhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.conftest import ROOT, TESTDATA, run_wslog

SIDES = ("client.log", "server.log")


def test_version_flag_prints_the_installed_version() -> None:
    result = run_wslog("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"wslog {version('wslog')}")


@pytest.mark.parametrize(
    "command", [[], ["analyze"], ["exporter"], ["tail"], ["doctor"], ["lab"], ["lab", "run"]]
)
def test_dash_h_is_help_everywhere(command: list[str]) -> None:
    result = run_wslog(*command, "-h")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert "<bool>" not in result.stdout  # a flag takes no value: never invite --flag true


def test_the_command_list_flows_each_summary_as_one_paragraph() -> None:
    """On a terminal wide enough for every summary, each command is one row: no docstring line
    break carried into ``wslog --help`` as a ragged second row."""
    result = subprocess.run(
        [sys.executable, "-m", "wslog", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "COLUMNS": "400"},
    )
    panel = result.stdout.split("Commands")[1].split("╰")[0].splitlines()[1:]
    names = [row.split()[1] for row in panel]
    assert names == ["version", "analyze", "exporter", "tail", "doctor", "lab"]


@pytest.mark.parametrize(
    ("command", "interactive"),
    [("exporter", []), ("tail", ["--filter-namespace", "--service", "--outcome"])],
)
def test_every_flag_of_the_long_running_commands_has_an_environment_variable(
    command: str, interactive: list[str]
) -> None:
    """The README promises a WSLOG_* variable for each (tail's display filters excepted)."""
    result = subprocess.run(
        [sys.executable, "-m", "wslog", command, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "COLUMNS": "400"},
    )
    options = [line for line in result.stdout.splitlines() if line.startswith("│ --")]
    assert len(options) > 15
    lacking = [o.split()[1] for o in options if "env var:" not in o and "--help" not in o]
    assert lacking == interactive


def test_the_pair_window_has_one_name_and_the_old_one_still_works_with_a_note() -> None:
    logs = str(ROOT / "testdata" / "lab" / "json" / "h1")
    new = run_wslog("analyze", logs, "--pair-window", "5", "-f", "json")
    old = run_wslog("analyze", logs, "--window", "5", "-f", "json")
    assert new.returncode == old.returncode == 0
    assert old.stdout == new.stdout
    assert "--window is deprecated: use --pair-window" in old.stderr
    for command in ("analyze", "exporter", "tail"):
        assert "--pair-window" in run_wslog(command, "--help").stdout


def test_help_and_analyzing_files_never_import_the_cluster_the_metrics_or_the_lab_runtime(
    tmp_path: Path,
) -> None:
    """A cold start costs only what the command uses: ``kubernetes`` (a quarter of a second to
    import), ``prometheus_client`` and the lab's runtime load only for the commands that need
    them."""
    log = tmp_path / "two.log"
    lab = TESTDATA / "lab" / "json" / "h1"
    log.write_text("".join((lab / side).read_text().splitlines(keepends=True)[0] for side in SIDES))
    probe = (
        "import sys\n"
        "from wslog.cli import command\n"
        "try:\n"
        "    command()(sys.argv[1:], standalone_mode=False)\n"
        "finally:\n"
        "    heavy = ('kubernetes', 'prometheus_client', 'asyncio', 'websockets')\n"
        "    print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)), file=sys.stderr)\n"
    )
    for args in (["--help"], ["analyze", str(log)]):
        done = subprocess.run(
            [sys.executable, "-c", probe, *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr.splitlines()[-1] == "[]", (args, done.stderr)
    assert "h1-h1" in done.stdout  # the analysis did run


def test_tail_refuses_the_nats_source_instead_of_taking_partitions_over() -> None:
    """A tail consuming a correlator's partitions would take them from the running replicas
    (each partition's consumer resumes for its newest reader)."""
    result = run_wslog("tail", "--source", "nats", "--nats-url", "nats://127.0.0.1:9")
    assert result.returncode == 2, result.stderr
    assert "--source nats is a correlator replica's input" in result.stderr
    assert "Traceback" not in result.stderr


def _allocator_options(env_conf: str | None) -> dict[str, str]:
    """jemalloc's options as polars' allocator reports them at exit (``stats_print``), in a
    fresh interpreter that imports ``wslog`` first, as both entry points do."""
    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    if env_conf is not None:
        env["_RJEM_MALLOC_CONF"] = env_conf
    probe = (
        "import os, wslog\n"
        "os.environ['_RJEM_MALLOC_CONF'] += ',stats_print:true'\n"
        "import polars as pl\n"
        "pl.DataFrame({'a': [1]})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "<jemalloc>" not in done.stderr  # an option jemalloc does not know
    found = re.findall(
        r"^\s*opt\.(narenas|dirty_decay_ms|muzzy_decay_ms): (-?\d+)", done.stderr, re.M
    )
    return dict(found)


def test_wslog_tunes_the_allocator_before_polars_loads_and_a_users_setting_wins() -> None:
    """Freed pages kept 30 s, two arenas (wslog/__init__.py): the options reach jemalloc, which
    reads them once, when polars loads; a user's own ``_RJEM_MALLOC_CONF`` is left alone."""
    ours = _allocator_options(None)
    assert ours == {"narenas": "2", "dirty_decay_ms": "30000", "muzzy_decay_ms": "30000"}
    theirs = _allocator_options("narenas:3")
    assert theirs["narenas"] == "3"
    assert theirs["dirty_decay_ms"] != "30000"
