"""The control-quality benchmark (scenarios, the simulated-time runner, the report), the soak run and the
footprint measurement. ``python -m benchmark`` runs it (see ``cli.py``)."""
