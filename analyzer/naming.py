"""Names the mesh gives things, recovered from what a log line carries.

Istio names clusters ``outbound|PORT|SUBSET|FQDN`` and ``inbound|PORT||``
(``inbound|PORT|NAME|FQDN`` before 1.10) and its mTLS SNI ``outbound_.PORT_.SUBSET_.FQDN``;
kubectl, the kubelet and the exporter name sources ``namespace/pod``,
``/var/log/pods/NS_POD_UID/...`` or ``/var/log/containers/POD_NS_CONTAINER-ID.log``.
These polars expressions turn them into the labels of
docs/design.md section 2.
"""

from __future__ import annotations

import polars as pl

_POD_DIR = r"(?:^|/)pods/([a-z0-9.-]+)_([a-z0-9.-]+)_[0-9a-f-]+/"
_CONTAINER_FILE = r"(?:^|/)containers/([a-z0-9.-]+)_([a-z0-9.-]+)_[^/]+\.log$"  # pod_ns_...
# Deployment pods end in -<replicaset hash>-<5 chars>; StatefulSet/DaemonSet pods differ.
_POD_SUFFIX = r"-[a-z0-9]{8,10}-[a-z0-9]{5}$|-[a-z0-9]{5}$"


def cluster_service(cluster: pl.Expr) -> pl.Expr:
    """``outbound|8080||svc.ns.svc.cluster.local`` -> ``svc.ns.svc.cluster.local``; also the
    server side's ``inbound|8080|http|svc.ns.svc.cluster.local`` of Istio before 1.10 (since
    then inbound clusters are ``inbound|8080||`` and name nothing)."""
    fqdn = cluster.str.extract(r"^(?:outbound|inbound)\|[^|]*\|[^|]*\|(.+)$", 1)
    return pl.when(fqdn.str.len_chars() > 0).then(fqdn)


def service_port(cluster: pl.Expr) -> pl.Expr:
    """``outbound|8080||svc.ns.svc.cluster.local`` -> 8080, the Service port a client sidecar
    or gateway dialled; null for anything else (an ``inbound|`` cluster's port is the app's)."""
    port = cluster.str.extract(r"^outbound\|([0-9]+)\|[^|]*\|[^|]*$", 1)
    return port.cast(pl.Int64, strict=False)


def sni_service(sni: pl.Expr) -> pl.Expr:
    """Istio's mTLS SNI, which the server sidecar sees: ``outbound_.8080_._.svc.ns.svc.cluster.
    local`` (``_`` or the subset between the dots) -> ``svc.ns.svc.cluster.local``."""
    fqdn = sni.str.extract(r"^outbound_\.\d+_\.[^.]*_\.(.+)$", 1)
    return pl.when(fqdn.str.len_chars() > 0).then(fqdn)


# A DNS name (RFC 1123 labels, 253 characters at most) that is not an IPv4 address.
_DNS_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$"
_IPV4 = r"^[0-9.]+$"
MAX_NAME = 253


def authority_service(authority: pl.Expr) -> pl.Expr:
    """``svc.ns.svc.cluster.local:8080`` or ``svc:8080`` -> host without the port, lowercase;
    null unless it is a DNS name: the client chose this value, so an address, an overlong or
    malformed host never becomes a service name (nor a metric label)."""
    host = authority.str.replace(r":\d+$", "").str.to_lowercase()
    valid = (
        (host.str.len_chars() <= MAX_NAME)
        & host.str.contains(_DNS_NAME)
        & ~host.str.contains(_IPV4)
    )
    return pl.when(valid).then(host.str.strip_suffix("."))


def service_namespace(service: pl.Expr) -> pl.Expr:
    """The namespace part of a Kubernetes service FQDN (``svc.ns.svc...``), else null."""
    return service.str.extract(r"^[^.]+\.([^.]+)\.svc(\.|$)", 1)


_NS_POD = r"^([a-z0-9-]+)/([a-z0-9.-]+)(/[a-z0-9-]+)?$"  # exporter: ns/pod[/container]
_KUBECTL_PREFIX = r"^pod/([a-z0-9.-]+)/[a-z0-9-]+$"  # kubectl logs --prefix: no namespace


def source_namespace(source: pl.Expr) -> pl.Expr:
    """``ns/pod[/container]`` (the exporter) or a /var/log/pods path -> ns."""
    from_dir = source.str.extract(_POD_DIR, 1)
    from_file = source.str.extract(_CONTAINER_FILE, 2)
    named = pl.when(~source.str.contains(_KUBECTL_PREFIX)).then(source.str.extract(_NS_POD, 1))
    return pl.coalesce(from_dir, from_file, named)


def source_pod(source: pl.Expr) -> pl.Expr:
    from_dir = source.str.extract(_POD_DIR, 2)
    from_file = source.str.extract(_CONTAINER_FILE, 1)
    from_prefix = source.str.extract(_KUBECTL_PREFIX, 1)
    return pl.coalesce(from_dir, from_file, from_prefix, source.str.extract(_NS_POD, 2))


def source_workload(source: pl.Expr) -> pl.Expr:
    """The workload owning the pod a source names: the pod name without its generated suffix."""
    return source_pod(source).str.replace(_POD_SUFFIX, "")


def strip_query(path: pl.Expr) -> pl.Expr:
    return path.str.replace(r"[?#].*$", "")


def destination_service() -> pl.Expr:
    """From what the mesh named: the client's cluster, else the server's (before Istio 1.10),
    else the mTLS SNI the server saw; only then the authority host the client sent."""
    return pl.coalesce(
        cluster_service(pl.col("upstream_cluster")),
        cluster_service(pl.col("server_cluster")),
        sni_service(pl.col("server_sni")),
        authority_service(pl.col("authority")),
    )
