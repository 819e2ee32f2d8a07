"""The ``wslog`` command: the composition root that wires the analyzer and the exporter into one
typer app. Nothing else lives here."""
