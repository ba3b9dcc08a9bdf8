"""The documentation site builds strictly: a broken link or anchor, a page missing from the
navigation or a docstring mkdocstrings cannot read fails the suite."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _needs_mkdocs() -> None:
    if importlib.util.find_spec("mkdocs") is None:
        message = 'mkdocs is not installed: pip install -e ".[docs]"'
        if os.environ.get("CI"):  # CI installs the [docs] extra: a missing one is a broken install
            pytest.fail(message)
        pytest.skip(message)


def test_the_site_builds_strictly_with_no_warning(tmp_path):
    _needs_mkdocs()
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    warnings = [line for line in output.splitlines() if re.match(r"\s*WARNING\b", line)]
    assert not warnings, "\n".join(warnings)
    built = tmp_path / "site"
    for page in (
        "getting-started",
        "method",
        "run-directory",
        "report",
        "benchmarks",
        "architecture",
        "studies/relearning",
        "studies/savings",
        "api/core",
    ):
        assert (built / page / "index.html").is_file(), page
    # The API reference is generated from the docstrings, not left empty.
    assert "collect_stats" in (built / "api" / "core" / "index.html").read_text(encoding="utf-8")


def test_every_docs_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md"))
    missing = [page for page in pages if page not in nav]
    assert not missing, f"pages missing from mkdocs.yml's nav: {missing}"


def test_the_docs_figure_is_the_readmes():
    readme_figure = ROOT / "demos" / "report.png"
    assert (DOCS / "assets" / "report.png").read_bytes() == readme_figure.read_bytes()


def test_the_architecture_page_lists_the_floors_the_layer_test_checks():
    spec = importlib.util.spec_from_file_location(
        "test_layers", Path(__file__).with_name("test_layers.py")
    )
    layers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layers)
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+)[^|]* \| ([^|]+) \|", page, flags=re.MULTILINE)
    listed = {int(floor): set(re.findall(r"`([a-z_]+)`", names)) for floor, names in rows}
    assert listed == {index + 1: names for index, names in enumerate(layers.FLOORS)}
