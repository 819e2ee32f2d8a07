"""What a refused extended CONNECT looks like (``analyzer.signatures``), on every entry the lab
captured: the signature marks exactly the refusing sidecar's entries, and the lab shows a
server sidecar (HTTP/2 mesh hop, scenario h2-no-allow-connect) and a client sidecar (its app
speaks HTTP/2, scenario app-h2-no-allow-connect) writing it, so it never tells the side."""

from __future__ import annotations

import polars as pl
import pytest

from analyzer.signatures import connect_rejected, handshake_unsuccessful
from tests.conftest import TESTDATA
from tests.test_decode import decode_bytes

LAB = TESTDATA / "lab"


def matching(fmt: str, signature: pl.Expr) -> set[str]:
    """The lab logs (``scenario/file``) holding an entry with ``signature``."""
    found = set()
    for log in sorted((LAB / fmt).glob("*/*.log")):
        entries = decode_bytes(log.read_bytes()).entries
        if entries.height and entries.select(signature.fill_null(False).any()).item():
            found.add(f"{log.parent.name}/{log.name}")
    return found


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_only_the_refusing_sidecars_entries_carry_the_refused_connect_signature(
    fmt: str,
) -> None:
    assert matching(fmt, connect_rejected()) == {
        "h2-no-allow-connect/server.log",
        "app-h2-no-allow-connect/client.log",
    }


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_only_the_apps_that_answered_without_upgrading_show_an_unsuccessful_handshake(
    fmt: str,
) -> None:
    assert matching(fmt, handshake_unsuccessful()) == {
        "app-no-upgrade/client.log",
        "app-no-upgrade/server.log",
        "app-no-upgrade-h2/server.log",
    }
