"""wslog's in-cluster exporter: follow istio-proxy logs, run the analyzer's pipeline on
micro-batches, serve Prometheus metrics. Only ``exporter.kube`` talks to Kubernetes and only
``exporter.metrics`` defines Prometheus metrics."""
