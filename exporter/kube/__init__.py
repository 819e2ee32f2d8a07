"""The one place that talks to Kubernetes. The exporter's source (``source``) is built from the
client calls (``api``), pod discovery (``discovery``) and one log stream per pod (``streams``);
``snapshot`` reads each pod's log once for ``wslog analyze --kubernetes``; ``mesh`` reads the
mesh configuration ``wslog doctor`` checks. ``resume`` is the pure cursor logic."""

from exporter.kube.api import Api
from exporter.kube.resume import Cursor, Resume, parse_timestamp, since_time
from exporter.kube.source import KubeSource
from exporter.settings import KubeSettings

__all__ = ["Api", "Cursor", "KubeSource", "Resume", "connect", "parse_timestamp", "since_time"]


def connect(settings: KubeSettings) -> Api:
    """The API client for ``settings``' credentials (in-cluster, or a kubeconfig); a
    ``SourceError`` when there are none."""
    return Api.connect(settings)
