"""Predicted beside observed, on plain values; and the doctor package's public surface."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

import analyzer.doctor
from analyzer.cli import analyze_paths
from analyzer.doctor import Agreement, Observation, Prediction, Verdict, compare, istio
from analyzer.doctor.compare import observations, unpredicted_failures
from analyzer.doctor.model import ServicePort
from analyzer.vocab import Cause, Outcome, UpgradePath

SERVER = "ws.default.svc.cluster.local"


def _prediction(path: UpgradePath, verdict: Verdict, port: int = 8080) -> Prediction:
    cause = Cause.H2_CONNECT_NOT_ALLOWED if verdict is Verdict.FAIL else Cause.NONE
    return Prediction(SERVER, "default", port, "http", path, verdict, cause, (), "")


def _seen(path: UpgradePath, cause: Cause = Cause.NONE, port: int | None = 8080) -> Observation:
    outcome = Outcome.FAILED if cause else Outcome.UPGRADED
    return Observation(SERVER, port, path, outcome, cause)


def test_the_public_surface_is_pinned() -> None:
    assert sorted(analyzer.doctor.__all__) == [
        "Agreement",
        "Comparison",
        "DoctorSettings",
        "Inventory",
        "Observation",
        "Prediction",
        "Verdict",
        "compare",
        "inventory_from_manifests",
        "predict",
    ]


def test_only_the_mesh_hop_is_compared() -> None:
    [c], _ = compare([_prediction(UpgradePath.H1_H2, Verdict.OK)], [_seen(UpgradePath.H2_H2)])
    assert c.agreement is Agreement.AGREE


def test_unknown_paths_do_not_disagree() -> None:
    [c], _ = compare([_prediction(UpgradePath.H1_H1, Verdict.OK)], [_seen(UpgradePath.UNKNOWN)])
    assert c.agreement is Agreement.AGREE and c.observed is not None
    assert c.observed.upgrade_paths == ()


def test_observations_match_by_port_when_the_cluster_names_it() -> None:
    predictions = [
        _prediction(UpgradePath.H1_H1, Verdict.OK, 8080),
        _prediction(UpgradePath.H1_H2, Verdict.OK, 9090),
    ]
    comparisons, strays = compare(predictions, [_seen(UpgradePath.H1_H2, port=9090)])
    assert [c.agreement for c in comparisons] == [Agreement.NOT_OBSERVED, Agreement.AGREE]
    assert strays == []


def test_a_connection_without_port_counts_for_every_port_of_its_service() -> None:
    predictions = [
        _prediction(UpgradePath.H1_H1, Verdict.OK, 8080),
        _prediction(UpgradePath.H1_H2, Verdict.OK, 9090),
    ]
    comparisons, _ = compare(predictions, [_seen(UpgradePath.H1_H2, port=None)])
    assert [c.agreement for c in comparisons] == [Agreement.DISAGREE, Agreement.AGREE]


def test_services_nothing_predicts_are_listed() -> None:
    other = Observation(
        "other.default.svc.cluster.local", None, UpgradePath.H1_H1, Outcome.UPGRADED, Cause.NONE
    )
    _, strays = compare([], [other, other])
    assert [(s.service, s.connections) for s in strays] == [(other.service, 2)]


def test_a_connect_failure_disagrees_with_a_predicted_ok_even_on_the_same_path() -> None:
    [c], _ = compare(
        [_prediction(UpgradePath.H1_H2, Verdict.OK)],
        [_seen(UpgradePath.H1_H2), _seen(UpgradePath.H1_H2, Cause.H2_CONNECT_NOT_ALLOWED)],
    )
    assert c.agreement is Agreement.DISAGREE
    assert c.disagreements == (
        "predicted ok, observed 1 connection(s) failing with h2-connect-not-allowed",
    )


def test_only_failures_the_configuration_does_not_predict_are_unpredicted() -> None:
    failing = _seen(UpgradePath.H1_H2, Cause.H2_CONNECT_NOT_ALLOWED)
    stray = Observation(
        "other.default.svc.cluster.local", None, UpgradePath.H1_H2, Outcome.FAILED, failing.cause
    )
    predictions = [
        _prediction(UpgradePath.H1_H2, Verdict.OK, 8080),  # fails in the logs: unpredicted
        _prediction(UpgradePath.H1_H2, Verdict.FAIL, 9090),  # fails as predicted
        _prediction(UpgradePath.H1_H1, Verdict.OK, 7070),  # another hop, no failure
    ]
    seen = [failing, replace(failing, port=9090), _seen(UpgradePath.H1_H2, port=7070), stray]
    comparisons, strays = compare(predictions, seen)
    got = unpredicted_failures(comparisons, strays)
    assert [(o.service, o.port, o.connect_failures) for o in got] == [
        (SERVER, 8080, 1),
        (stray.service, None, 1),
    ]


def test_observations_from_analyze_carry_the_client_clusters_port(testdata: Path) -> None:
    result = analyze_paths([str(testdata / "lab/json/concurrent-h2")])
    seen = observations(result.connections)
    assert len(seen) == 3
    assert {(o.service, o.port, o.upgrade_path) for o in seen} == {
        ("websockets-server.default.svc.cluster.local", 8080, UpgradePath.H1_H2)
    }


# -- properties of Istio's rules -------------------------------------------------------------

label = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)


@given(st.lists(label, min_size=2, max_size=5), st.integers(0, 4))
def test_an_exact_host_beats_every_wildcard_and_longer_wildcards_beat_shorter(
    parts: list[str], cut: int
) -> None:
    host = ".".join(parts)
    wildcards = ["*"] + ["*." + ".".join(parts[i:]) for i in range(len(parts) - 1, 0, -1)]
    assert istio.most_specific([*wildcards, host], host) == host
    assert istio.most_specific(wildcards, host) == wildcards[-1]
    assert istio.most_specific(wildcards[: cut + 1], host) == wildcards[: cut + 1][-1]


@given(st.text(max_size=30), st.none() | st.text(max_size=20), st.integers(1, 65535))
def test_port_protocol_never_raises_and_http2_prefixes_mean_http2(
    name: str, app_protocol: str | None, number: int
) -> None:
    protocol, said = istio.port_protocol(ServicePort(number, name, "", app_protocol))
    assert said
    if app_protocol is None and name.lower().split("-")[0] in ("http2", "grpc"):
        assert protocol.is_http2


# -- subsets ------------------------------------------------------------------------------------


def _subset_rows() -> list[Prediction]:
    v1 = replace(_prediction(UpgradePath.H1_H1, Verdict.OK), subset="v1")
    v3 = replace(_prediction(UpgradePath.H1_H2, Verdict.FAIL), subset="v3")
    return [v1, v3]


def test_an_observation_naming_its_subset_counts_only_for_that_subsets_row() -> None:
    failing = replace(_seen(UpgradePath.H1_H2, Cause.H2_CONNECT_NOT_ALLOWED), subset="v3")
    comparisons, _ = compare(_subset_rows(), [failing])
    assert [(c.prediction.subset, c.agreement) for c in comparisons] == [
        ("v1", Agreement.NOT_OBSERVED),
        ("v3", Agreement.AGREE),
    ]


def test_an_observation_without_a_known_subset_counts_for_every_subset_row() -> None:
    untold = _seen(UpgradePath.H1_H2, Cause.H2_CONNECT_NOT_ALLOWED)  # subset None
    unpredicted = replace(untold, subset="v9")  # a subset no row predicts
    for seen in (untold, unpredicted):
        comparisons, _ = compare(_subset_rows(), [seen])
        assert [(c.prediction.subset, c.agreement) for c in comparisons] == [
            ("v1", Agreement.DISAGREE),
            ("v3", Agreement.AGREE),
        ]


def test_a_cluster_without_subset_goes_to_the_row_of_no_subset() -> None:
    rows = [_prediction(UpgradePath.H1_H1, Verdict.OK), *_subset_rows()]
    comparisons, _ = compare(rows, [replace(_seen(UpgradePath.H1_H1), subset="")])
    assert [(c.prediction.subset, c.agreement) for c in comparisons] == [
        (None, Agreement.AGREE),
        ("v1", Agreement.NOT_OBSERVED),
        ("v3", Agreement.NOT_OBSERVED),
    ]


def test_observations_from_analyze_carry_the_subset_of_the_client_cluster(
    testdata: Path, tmp_path: Path
) -> None:
    for log in ("client.log", "server.log"):
        text = (testdata / "lab/json/concurrent-h2" / log).read_text()
        (tmp_path / log).write_text(text.replace("outbound|8080||", "outbound|8080|v3|"))
    seen = observations(analyze_paths([str(tmp_path)]).connections)
    assert {(o.port, o.subset) for o in seen} == {(8080, "v3")}
    plain = observations(analyze_paths([str(testdata / "lab/json/concurrent-h2")]).connections)
    assert {(o.port, o.subset) for o in plain} == {(8080, "")}


def test_a_server_only_observation_takes_the_subset_from_the_mtls_sni(
    testdata: Path, tmp_path: Path
) -> None:
    sni = "outbound_.8080_.v3_.websockets-server.default.svc.cluster.local"
    text = (testdata / "lab/json/concurrent-h2/server.log").read_text()
    (tmp_path / "server.log").write_text(
        text.replace('"requested_server_name":null', f'"requested_server_name":"{sni}"')
    )
    seen = observations(analyze_paths([str(tmp_path / "server.log")]).connections)
    assert len(seen) == 3
    assert {(o.service, o.port, o.subset) for o in seen} == {
        ("websockets-server.default.svc.cluster.local", None, "v3")
    }
