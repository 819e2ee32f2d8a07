"""Table-driven cases for ``wslog doctor``'s prediction, one Istio rule per file.

Each ``tests/doctor_cases/*.yaml`` holds the rule it pins (``rule``), the manifests
(``objects``, plus ``include`` of ``base/*.yaml`` and ``published`` configurations of
``testdata/doctor/*.yaml``), optional ``settings`` (``client_namespace``,
``istio_version``) and the expected rows, each found by service, port and ``subset`` (absent: the
row of traffic routed to no subset): every field of the JSON contract that is given must be
equal (``differs_on`` too: the releases where an unknown version's verdict would differ);
``evidence``/``remedy`` list substrings that must appear, ``evidence_absent``/``remedy_absent``
ones that must not; ``only: true`` means no other row may be predicted. A case whose ``source``
names a published configuration records it in ``testdata/doctor/SOURCES.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from analyzer.doctor import (
    DoctorSettings,
    Prediction,
    Verdict,
    inventory_from_manifests,
    predict,
)
from analyzer.doctor.load import parse_documents

CASES = Path(__file__).parent / "doctor_cases"
PUBLISHED = Path(__file__).parent.parent / "testdata" / "doctor"
CASE_FILES = sorted(CASES.glob("*.yaml"))
EXACT = ("upgrade_path", "verdict", "cause")
Key = tuple[str, int, str | None]


def _key(row: Prediction | dict[str, Any]) -> Key:
    if isinstance(row, Prediction):
        return row.service, row.port, row.subset
    return row["service"], row["port"], row.get("subset")


def _load_case(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = yaml.safe_load(path.read_text())
    return case


def _predict(case: dict[str, Any]) -> list[Prediction]:
    docs: list[Any] = []
    for name in case.get("include", []):
        docs.extend(parse_documents((CASES / "base" / f"{name}.yaml").read_text(), name))
    for name in case.get("published", []):
        docs.extend(parse_documents((PUBLISHED / f"{name}.yaml").read_text(), name))
    docs.extend(case.get("objects", []))
    inventory = inventory_from_manifests(docs)
    expected = case.get("problems", [])  # parts of each problem the objects must give
    assert len(inventory.problems) == len(expected), inventory.problems
    for problem, part in zip(inventory.problems, expected, strict=True):
        assert part in problem, (part, problem)
    settings = case.get("settings", {})
    if "istio_version" in settings:
        inventory = inventory.with_istio_version(settings["istio_version"])
    return predict(inventory, DoctorSettings(client_namespace=settings.get("client_namespace")))


def test_there_is_a_case_for_every_rule_of_the_issue() -> None:
    names = {p.stem for p in CASE_FILES}
    for prefix in (
        "dr-",
        "port-level",
        "port-name-http2",
        "app-protocol",
        "mesh-upgrade",
        "envoyfilter-root",
        "envoyfilter-other-app",
        "envoyfilter-wrong-context",
        "envoyfilter-proxy-version-mismatch",
        "list-dump",
    ):
        assert any(n.startswith(prefix) for n in names), prefix


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_case(path: Path) -> None:
    case = _load_case(path)
    assert case.get("rule"), "every case says which rule it pins"
    rows = {_key(p): p for p in _predict(case)}
    for want in case["expect"]:
        got = rows.get(_key(want))
        assert got is not None, f"no prediction for {_key(want)}: {list(rows)}"
        _check_row(want, got)
    if case.get("only"):
        assert set(rows) == {_key(w) for w in case["expect"]}


def _check_row(want: dict[str, Any], got: Prediction) -> None:
    doc = got.to_json()
    for key in EXACT:
        if key in want:
            assert doc[key] == want[key], f"{key}: {doc}"
    if "differs_on" in want:
        assert doc.get("differs_on", []) == want["differs_on"], f"differs_on: {doc}"
    evidence = str(doc["evidence"])
    for text in want.get("evidence", []):
        assert text in evidence, f"{text!r} not in evidence: {evidence}"
    for text in want.get("evidence_absent", []):
        assert text not in evidence, f"{text!r} in evidence: {evidence}"
    for text in want.get("remedy", []):
        assert text in got.remedy, f"{text!r} not in remedy:\n{got.remedy}"
    for text in want.get("remedy_absent", []):
        assert text not in got.remedy, f"{text!r} in remedy:\n{got.remedy}"
    if want.get("remedy_is_empty"):
        assert got.remedy == ""
    assert (got.remedy == "") == (doc["verdict"] == "ok"), "a remedy exactly when it fails"
    if got.remedy:
        assert all(d for d in yaml.safe_load_all(got.remedy)), "the remedy is YAML"


def test_every_published_configuration_has_its_source_and_a_case() -> None:
    sources = (PUBLISHED / "SOURCES.md").read_text()
    used = {n for p in CASE_FILES for n in _load_case(p).get("published", [])}
    for path in sorted(PUBLISHED.glob("*.yaml")):
        assert f"`{path.name}`" in sources, f"{path.name} is not in SOURCES.md"
        assert path.stem in used, f"no case uses {path.name}"


def _expects_a_failure(path: Path) -> bool:
    return any(want.get("verdict") == "fail" for want in _load_case(path)["expect"])


FAILING_CASES = [p for p in CASE_FILES if _expects_a_failure(p)]


@pytest.mark.parametrize("path", FAILING_CASES, ids=[p.stem for p in FAILING_CASES])
def test_each_remedy_option_alone_fixes_its_port(path: Path) -> None:
    """A remedy's YAML documents are its numbered options; each, applied alone beside the
    configuration, makes the failing port pass."""
    case = _load_case(path)
    for broken in (p for p in _predict(case) if p.verdict is Verdict.FAIL):
        options = list(yaml.safe_load_all(broken.remedy))
        titles = [line for line in broken.remedy.splitlines() if line.startswith("# Option ")]
        assert [t.partition(":")[0] for t in titles] == [
            f"# Option {n}" for n in range(1, len(options) + 1)
        ]
        for option in options:
            fixed = {**case, "objects": [*case.get("objects", []), option]}
            rows = {_key(p): p for p in _predict(fixed)}
            assert rows[_key(broken)].verdict is Verdict.OK, option["kind"]
