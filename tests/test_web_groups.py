"""The web server's route groups (web_server.py's docstring): each ``web/<group>.py`` has ``register(app, deps)``,
is registered by ``create_app``, and never imports ``web_server`` (no import cycle)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import web_server

ROOT = Path(__file__).resolve().parent.parent


def group_modules() -> list[str]:
    """The modules of web/ that define a top-level ``register`` function."""
    found = []
    for path in sorted((ROOT / "web").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.FunctionDef) and n.name == "register" for n in tree.body):
            found.append(f"web.{path.stem}")
    return found


def test_every_route_group_is_registered_by_create_app() -> None:
    groups = group_modules()
    assert {"web.pages", "web.api_status", "web.api_mode", "web.api_setup"} <= set(groups)
    registered = {fn.__module__ for fn in web_server.ROUTE_GROUPS}
    assert registered == set(groups), "a web/ module with register() must be listed in web_server.ROUTE_GROUPS"
    for name in groups:
        assert importlib.import_module(name).register in web_server.ROUTE_GROUPS


def test_no_route_group_imports_web_server() -> None:
    for path in (ROOT / "web").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert "web_server" not in imported, f"{path.name} imports web_server: use web.common"


def test_create_app_stays_short() -> None:
    """The factory wires; the routes live in their groups."""
    tree = ast.parse((ROOT / "web_server.py").read_text(encoding="utf-8"))
    factory = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "create_app")
    assert factory.end_lineno is not None and factory.end_lineno - factory.lineno < 100
    assert "C901" not in (ROOT / "web_server.py").read_text(encoding="utf-8")
