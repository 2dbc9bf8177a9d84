"""The console's page refers only to files the package ships, each with the right media type."""

from __future__ import annotations

import re

from broker.server.console.gate import content_type, load_files

STATIC = "/console/static/"


def test_every_file_the_pages_and_script_load_is_shipped() -> None:
    files = load_files()
    wanted: set[str] = set()
    for page in ("index.html", "login.html"):
        for ref in re.findall(r'(?:href|src)="([^"]+)"', files[page].decode()):
            if ref.startswith(STATIC):
                wanted.add(ref.removeprefix(STATIC))
    for module in re.findall(r'from "\./([^"]+)"', files["console.js"].decode()):
        wanted.add(module)
    assert wanted >= {"console.js", "console.css", "vendor/cytoscape.esm.min.mjs"}
    assert wanted <= files.keys(), wanted - files.keys()


def test_scripts_are_served_as_javascript_and_licenses_ship_beside_the_libraries() -> None:
    files = load_files()
    for name in files:
        if name.endswith((".js", ".mjs")):
            assert content_type(name).startswith(b"text/javascript"), name
        if name.startswith("vendor/") and name.endswith(".min.mjs"):
            library = name.removeprefix("vendor/").split(".")[0]
            assert f"vendor/{library}.LICENSE" in files, name


def test_no_page_has_inline_script_or_style() -> None:
    for name, body in load_files().items():
        if name.endswith(".html"):
            text = re.sub(r"<!--.*?-->", "", body.decode(), flags=re.DOTALL)
            assert not re.search(r"<script(?![^>]*\bsrc=)", text), name
            assert "<style" not in text and " style=" not in text, name
            assert not re.search(r"\son[a-z]+=", text), name  # no inline event handlers
