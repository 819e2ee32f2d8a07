# syntax=docker/dockerfile:1
# The wslog image (exporter and CLI). Build from the repository root:
#   docker build -t ghcr.io/wslog/wslog:0.1.0 .
# Two stages: the first installs wslog and its dependencies (all published as wheels) into a
# virtualenv; the second copies only that virtualenv onto the same slim Python base, runs as an
# unprivileged numeric user and carries no compiler, pip or setuptools.
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/wslog
COPY pyproject.toml README.md ./
COPY analyzer ./analyzer
COPY exporter ./exporter
COPY lab ./lab
COPY wslog ./wslog
RUN /opt/wslog/bin/pip install --only-binary=:all: --no-binary=wslog . \
 && /opt/wslog/bin/pip uninstall --yes pip setuptools wheel

FROM python:3.11.11-slim-bookworm
RUN python -m pip uninstall --yes pip setuptools wheel
COPY --from=build /opt/wslog /opt/wslog
ENV PATH=/opt/wslog/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=3s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
ENTRYPOINT ["wslog"]
CMD ["exporter", "--listen", "0.0.0.0:9090"]
