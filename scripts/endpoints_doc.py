"""Rewrite docs/endpoints.md from the legacy endpoint table and the service registry."""
from pathlib import Path

from gantry_server.endpoint_doc import render

Path(__file__).resolve().parent.parent.joinpath("docs", "endpoints.md").write_text(render())
