"""Every demo as a notebook in a real Jupyter kernel, then as nbconvert's HTML in Chromium.

``test_demos`` runs the demos as scripts (``runpy``) and checks what they computed. Users open
them as notebooks, where outputs go through a kernel's display machinery instead: here each
demo is converted with jupytext, executed cell by cell by nbclient in an IPython kernel (small
settings through the ``NP_DEMO_*`` variables, which the kernel inherits), exported to HTML by
nbconvert and rendered offline in headless Chromium, where every CircuitsVis view and Plotly
figure must be drawn, with no console error and no request off the machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import Chromium

jupytext = pytest.importorskip("jupytext", reason="the [test] extra has jupytext")
nbclient = pytest.importorskip("nbclient", reason="the [test] extra has nbclient")
nbconvert = pytest.importorskip("nbconvert", reason="the [test] extra has nbconvert")

pytestmark = [pytest.mark.slow, pytest.mark.browser]

DEMOS = Path(__file__).resolve().parents[2] / "demos"
#: Each demo's small settings (as in test_demos) and the fewest CircuitsVis views and Plotly
#: figures its outputs hold (counted over the page and the frames inside it).
NOTEBOOKS: dict[str, tuple[dict[str, Any], int, int]] = {
    "01_quickstart.py": (dict(train_sentences=400, sentences=48, train_steps=40), 1, 0),
    "02_relearning.py": (
        dict(model="tiny-bert", train_sentences=96, sentences=40, base_steps=6, stage_steps=4),
        1,  # the report's
        3,  # two figures of its own, and the report's
    ),
    "03_polysemantic_neurons.py": (dict(sentences=60, top_k=10, share=0.3, n_shown=2), 1, 0),
    "04_your_own_hooks.py": (dict(model="tiny-gpt2", sentences=30, n_neurons=10), 0, 0),
    "05_paper_setting.py": ({}, 0, 0),
    "06_removals.py": (
        dict(model="tiny-bert", train_sentences=96, sentences=40, base_steps=6, stage_steps=3),
        0,
        1,  # the three removals' recovery curves
    ),
    "07_llm.py": (
        dict(model="tiny-llama", sentences=30, n_neurons=12, n_shown=2, new_tokens=3),
        1,  # the top neurons' view
        0,
    ),
}
# Counted in the page and in every frame (a report and each figure are isolated frames).
DRAWN = """() => {
    const docs = [document, ...Array.from(document.querySelectorAll('iframe')).map(
        f => f.contentDocument).filter(d => d)];
    const count = (selector, drawn) => docs.reduce(
        (n, d) => n + Array.from(d.querySelectorAll(selector)).filter(drawn).length, 0);
    return {
        views: count('.np-cv', () => true),
        views_drawn: count('.np-cv', e => e.childElementCount > 0
            && !e.classList.contains('np-waiting') && !e.classList.contains('np-error')),
        figures: count('.plotly-graph-div', () => true),
        figures_drawn: count('.plotly-graph-div', e => e.querySelector('svg.main-svg')),
        frames: docs.length - 1,
    };
}"""
# nbconvert's template loads require.js and MathJax from a CDN; offline, they are empty
# scripts (local data: URLs), so that every request the page makes is one of ours.
NO_CDN = "data:text/javascript,"


@pytest.fixture(scope="module")
def chrome() -> Iterator[Chromium]:
    with Chromium() as browser:
        yield browser


def execute(name: str, settings: dict[str, Any], cwd: Path, monkeypatch: pytest.MonkeyPatch):
    """The demo as a notebook, executed in a fresh IPython kernel; a cell's error fails it."""
    for key, value in settings.items():
        monkeypatch.setenv(f"NP_DEMO_{key.upper()}", str(value))
    monkeypatch.setenv("NP_DEMO_OUT", str(cwd / "run"))
    notebook = jupytext.read(DEMOS / name)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback
    return notebook


def outputs(notebook) -> list[dict[str, Any]]:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


def in_outputs(produced: list[dict[str, Any]], css_class: str) -> int:
    """Elements of ``css_class`` in the outputs' HTML, read from the text (in a frame's srcdoc
    the quotes are escaped): what the browser must find drawn."""
    texts = [o.get("data", {}).get("text/html", "") for o in produced]
    return sum(t.count(f'class="{css_class}') + t.count(f"class=&quot;{css_class}") for t in texts)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_demo_executes_in_a_kernel_and_its_views_draw_offline(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chrome: Chromium
) -> None:
    settings, views, figures = NOTEBOOKS[name]
    notebook = execute(name, settings, tmp_path, monkeypatch)
    produced = outputs(notebook)
    assert not [o for o in produced if o.output_type == "error"]
    # Every figure is shown through show(): Plotly's mimetype plus an offline frame.
    for output in produced:
        data = output.get("data", {})
        if "application/vnd.plotly.v1+json" in data:
            assert "text/html" in data and "<iframe" in data["text/html"], name

    html, _ = nbconvert.HTMLExporter(
        template_name="lab", require_js_url=NO_CDN, mathjax_url=NO_CDN, jquery_url=NO_CDN
    ).from_notebook_node(notebook)
    page = tmp_path / f"{Path(name).stem}.html"
    page.write_text(html, encoding="utf-8")
    # Frames draw after the page settles: wait until every view and figure is drawn (and at
    # least the demo's own are there), or a minute has passed.
    done = (
        f"() => {{ const d = ({DRAWN})(); return d.views >= {views} && d.figures >= {figures}"
        " && d.views_drawn === d.views && d.figures_drawn === d.figures; }"
    )
    rendered = chrome.render(
        page, wait_ms=60_000, wait_for=done, evaluate={"drawn": f"({DRAWN})()"}
    )
    assert rendered.external_requests == [], rendered.external_requests
    assert rendered.console_errors == [], rendered.console_errors
    drawn = rendered.values["drawn"]
    assert drawn["views_drawn"] == drawn["views"], drawn
    assert drawn["figures_drawn"] == drawn["figures"], drawn
    # Every view and figure the outputs hold, and at least those the demo displays.
    assert drawn["views"] == in_outputs(produced, "np-cv") >= views, drawn
    assert drawn["figures"] == in_outputs(produced, "plotly-graph-div") >= figures, drawn
