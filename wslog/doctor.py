"""``wslog doctor``: catch the WebSocket 503 in configuration, before deploying.

Reads Kubernetes and Istio objects from files (``--config``) or the cluster, predicts each
Service port's upgrade path and verdict, prints the evidence and the fix, and exits 1 when any
port would fail (for CI). With ``--logs`` it sets what ``wslog analyze`` observes beside it, and
a failure the logs show but the configuration does not predict fails too. A check of nothing (no
Service found) exits 2: a CI gate must not pass because it was pointed at the wrong file.
"""

from __future__ import annotations

import json
import subprocess
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from analyzer.cli import AnalysisOptions, analyze_paths
from analyzer.doctor import DoctorSettings, Inventory, Prediction, compare, predict
from analyzer.doctor.compare import Observed, observations
from analyzer.doctor.load import load_paths
from analyzer.doctor.model import DEFAULT_ROOT_NAMESPACE
from analyzer.doctor.predict import nothing_to_check
from analyzer.doctor.report import Report, render_table, to_json
from analyzer.errors import InputError, WslogError
from analyzer.vocab import Cause

KUSTOMIZE_TIMEOUT_S = 60


class DoctorFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


ConfigOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--config",
        "-c",
        help="Kubernetes/Istio YAML: files, directories (a kustomization is rendered with "
        "kubectl kustomize), kubectl get -o yaml dumps, or - for stdin. Without it, the "
        "cluster is read.",
    ),
]
LogsOpt = Annotated[
    list[str] | None,
    typer.Option(help="Saved istio-proxy logs (as wslog analyze reads them) to compare with."),
]


def doctor(
    config_paths: ConfigOpt = None,
    logs: LogsOpt = None,
    output_format: Annotated[
        DoctorFormat, typer.Option("--format", "-f", help="Report format.")
    ] = DoctorFormat.TABLE,
    istio_version: Annotated[
        str | None,
        typer.Option(help="Istio's version, when istiod's image is not among the objects."),
    ] = None,
    client_namespace: Annotated[
        str | None,
        typer.Option(help="Namespace of the clients (default: each Service's own namespace)."),
    ] = None,
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="cluster: namespaces to read (default: all)."),
    ] = None,
    istio_namespace: Annotated[
        str, typer.Option(help="cluster: Istio's root namespace (the istio ConfigMap).")
    ] = DEFAULT_ROOT_NAMESPACE,
    kubeconfig: Annotated[
        str | None, typer.Option(help="cluster: kubeconfig file.", envvar="KUBECONFIG")
    ] = None,
    context: Annotated[str | None, typer.Option(help="cluster: kubeconfig context.")] = None,
    log_format: Annotated[
        str | None, typer.Option(help="--logs: the access-log format, as wslog analyze takes it.")
    ] = None,
) -> None:
    """Predict each Service port's WebSocket upgrade path (h1-h1 or h1-h2) from DestinationRules,
    port protocols, the mesh config and EnvoyFilters; fail where the HTTP/2 hop would answer 503
    (h2-connect-not-allowed), with the YAML that fixes it: each option is a YAML document of its
    own, to apply alone (kubectl apply -f -).

    Exit codes:
      0  every port checked passes
      1  a port is predicted to fail, or the --logs show h2-connect-not-allowed
         failures the configuration does not predict (other disagreements with
         the logs are reported but change no exit code)
      2  nothing was checked: a missing or unreadable file, no Service found,
         the cluster not readable"""
    try:
        inventory = _inventory(config_paths, namespace or [], istio_namespace, kubeconfig, context)
        if istio_version:
            inventory = inventory.with_istio_version(istio_version)
        settings = DoctorSettings(client_namespace=client_namespace)
        predictions = tuple(predict(inventory, settings))
        _require_ports(inventory, predictions, config_paths, namespace or [])
        report = _report(inventory, predictions, logs, log_format)
    except (InputError, WslogError) as error:
        typer.echo(f"wslog doctor: {error}", err=True)
        raise typer.Exit(2) from error
    if output_format is DoctorFormat.JSON:
        typer.echo(json.dumps(to_json(report), indent=2))
    else:
        render_table(report, Console())
    if report.unpredicted:
        typer.echo(f"wslog doctor: {_unpredicted(report.unpredicted)}", err=True)
    if report.failed or report.unpredicted:
        raise typer.Exit(1)


def _inventory(
    paths: list[str] | None,
    namespaces: list[str],
    root: str,
    kubeconfig: str | None,
    context: str | None,
) -> Inventory:
    if paths:
        return load_paths(paths, kustomize=kubectl_kustomize)
    from exporter.kube.mesh import MeshReadSettings, read_cluster

    settings = MeshReadSettings(kubeconfig, context, tuple(namespaces), root)
    return read_cluster(settings)


def _require_ports(
    inventory: Inventory,
    predictions: tuple[Prediction, ...],
    paths: list[str] | None,
    namespaces: list[str],
) -> None:
    reason = nothing_to_check(inventory, predictions)
    if reason is None:
        return
    if paths:
        shown = ", ".join("standard input" if p == "-" else p for p in paths)
        raise InputError(
            f"{reason} in {shown}: --config takes the Kubernetes/Istio YAML that defines the "
            "Services to check (manifests, kubectl get -o yaml output, a kustomization); "
            "access logs go to --logs"
        )
    scope = f"namespace(s) {', '.join(namespaces)}" if namespaces else "any namespace"
    raise InputError(
        f"{reason} in {scope} of the cluster: pass --namespace where the Services live, "
        "--context for another cluster, or --config FILES"
    )


def _unpredicted(failures: tuple[Observed, ...]) -> str:
    shown = "; ".join(f"{o.service}: {o.connect_failures} connection(s)" for o in failures)
    return (
        f"the logs show {Cause.H2_CONNECT_NOT_ALLOWED} failures the configuration does not "
        f"predict ({shown}): exit 1"
    )


def _report(
    inventory: Inventory,
    predictions: tuple[Prediction, ...],
    logs: list[str] | None,
    log_format: str | None,
) -> Report:
    if not logs:
        return Report(predictions, problems=inventory.problems)
    result = analyze_paths(logs, AnalysisOptions(log_format=log_format))
    comparisons, strays = compare(predictions, observations(result.connections))
    return Report(predictions, tuple(comparisons), tuple(strays), inventory.problems)


def kubectl_kustomize(directory: Path) -> str:
    """A kustomization rendered by ``kubectl kustomize``."""
    try:
        done = subprocess.run(
            ["kubectl", "kustomize", str(directory)],
            capture_output=True,
            text=True,
            timeout=KUSTOMIZE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise InputError(
            f"{directory} is a kustomization and kubectl kustomize could not run ({error}); "
            f"render it elsewhere and pass the output: --config rendered.yaml"
        ) from error
    if done.returncode != 0:
        raise InputError(f"kubectl kustomize {directory} failed: {done.stderr.strip()}")
    return done.stdout
