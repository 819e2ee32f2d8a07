"""wslog lab: real Envoy sidecars on 127.0.0.1, the project's ground truth.

The decoder, correlator and classifier are only as right as the logs they are tested on. The lab
produces those logs from a real Envoy configured the way Istio configures its sidecars, for each
WebSocket case wslog explains, so nothing in ``testdata/lab`` is written by hand.

Pure parts (``scenarios``, ``envoy_config``) build values; ``processes``, ``apps``, ``client`` and
``runner`` are the edges that start and stop programs.
"""

from __future__ import annotations
