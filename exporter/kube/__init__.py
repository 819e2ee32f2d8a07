"""The one place that talks to Kubernetes: pod discovery and log streams (``logs``), and the
mesh configuration ``wslog doctor`` reads (``mesh``). ``resume`` is the pure cursor logic."""

from exporter.kube.logs import KubeSource
from exporter.kube.resume import Cursor, Resume, parse_timestamp, since_time

__all__ = ["Cursor", "KubeSource", "Resume", "parse_timestamp", "since_time"]
