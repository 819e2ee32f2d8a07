"""The one place that talks to Kubernetes: pod discovery and log streams (``logs``), and the
mesh configuration ``wslog doctor`` reads (``mesh``). ``resume`` is the pure cursor logic."""

from exporter.kube.logs import Api, KubeSource
from exporter.kube.resume import Cursor, Resume, parse_timestamp, since_time
from exporter.sources import KubeSettings

__all__ = ["Api", "Cursor", "KubeSource", "Resume", "connect", "parse_timestamp", "since_time"]


def connect(settings: KubeSettings) -> Api:
    """The API client for ``settings``' credentials (in-cluster, or a kubeconfig); a
    ``SourceError`` when there are none."""
    return Api.connect(settings)
