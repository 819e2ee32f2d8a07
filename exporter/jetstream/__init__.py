"""Mesh scale on NATS JetStream: node-local forwarders publish each line under its partition key
(``analyzer.partition``); correlator replicas each consume their partitions and count
connections as one exporter does (docs/design.md section 3). The only package importing ``nats``.
"""

from exporter.jetstream.forward import Forwarder, ForwardStats, LoggedEvents
from exporter.jetstream.source import JetStreamSource
from exporter.jetstream.subjects import server_config

__all__ = ["ForwardStats", "Forwarder", "JetStreamSource", "LoggedEvents", "server_config"]
