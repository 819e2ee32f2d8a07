"""``wslog doctor``: predict each Service port's WebSocket upgrade path from Kubernetes and Istio
configuration, before any traffic flows.

The prediction is pure: ``parse`` turns manifests (dicts, wherever they came from) into the frozen
objects of ``model``; ``istio`` holds Istio's selection rules; ``predict`` decides each port;
``remedy`` writes the fix as YAML; ``compare`` sets predictions beside observed connections.
"""

from __future__ import annotations

from analyzer.doctor.compare import Agreement, Comparison, Observation, compare
from analyzer.doctor.model import Inventory, Verdict
from analyzer.doctor.parse import inventory_from_manifests
from analyzer.doctor.predict import DoctorSettings, Prediction, predict

__all__ = [
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
