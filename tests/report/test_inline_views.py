"""Views, ranking tables and reports inline in a notebook: each cell output is a fragment of one
shared page, the CircuitsVis bundle travels once per session, and nothing is fetched.

The browser tests render what a notebook page holds: cell outputs concatenated, as a saved (or
reopened, or nbconvert-exported) notebook shows them, and outputs attached out of order with
their scripts re-created, as JupyterLab does.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from browser import Chromium, Rendered

from neuroplastic.api import rank_neurons, tag_sentence
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.stats import NeuronStats
from neuroplastic.data.load import encode_split
from neuroplastic.errors import NeuroplasticError
from neuroplastic.report import views
from neuroplastic.report.html import (
    NOTEBOOK_CSS,
    HtmlPage,
    reset_notebook_bundle,
    text_neuron_activations_props,
)
from neuroplastic.report.views import (
    NeuronExamples,
    NeuronView,
    RankingTable,
    ranking_table,
    show,
    side_by_side,
)

# Minutes of model runs and subprocesses: outside the quick loop (pytest -m 'not slow').
pytestmark = pytest.mark.slow

BUNDLE = "var CircuitsVis="  # once in the CircuitsVis bundle
HOSTILE = "<img src=x onerror=window.__pwned=1>"


def examples(layer: int, neuron: int, sentences: list[list[str]]) -> NeuronExamples:
    """A neuron's examples, as examples_from_model makes them, without a model."""
    activations = [np.linspace(0.1, 1.0, len(tokens)).astype(np.float32) for tokens in sentences]
    top = pd.DataFrame(
        {
            "k": [0, 1],
            "value": [1.0, 0.5],
            "sentence": [0, 0],
            "position": [len(sentences[0]) - 1, 0],
            "token": [sentences[0][-1], sentences[0][0]],
            "label": ["LOC", "O"],
        }
    )
    return NeuronExamples(
        layer, neuron, f"L{layer}:N{neuron}", sentences, activations, top, full=True
    )


PARIS = examples(1, 2, [["The", " city", " of", " Paris"], ["Berlin", " is", " big"]])
BOB = examples(3, 4, [["Alice", " met", HOSTILE, " Bob"]])


@pytest.fixture(autouse=True)
def fresh_session() -> Iterator[None]:
    reset_notebook_bundle()
    yield
    reset_notebook_bundle()


def view_boxes(fragment: str) -> list[str]:
    return re.findall(r'<div id="([\w-]+)" class="np-cv np-waiting"', fragment)


# ---------------------------------------------------------------------------------------------
# Fragments (no browser)
# ---------------------------------------------------------------------------------------------


def test_the_first_view_of_a_session_carries_the_bundle_once() -> None:
    first = NeuronView([PARIS])._repr_html_()
    later = [side_by_side([PARIS, BOB])._repr_html_(), BOB._repr_html_()]
    assert first.count(BUNDLE) == 1
    assert all(BUNDLE not in fragment for fragment in later)
    # A table has no view: it neither carries the bundle nor uses up the session's first one.
    reset_notebook_bundle()
    table = RankingTable(pd.DataFrame({"layer": [0]}), "t")._repr_html_()
    assert BUNDLE not in table and "<script" not in table
    assert BUNDLE in BOB._repr_html_()
    # After the output that carried it was cleared: send it again.
    reset_notebook_bundle()
    assert BOB._repr_html_().count(BUNDLE) == 1


def test_fragments_are_scoped_well_formed_and_offline() -> None:
    view = side_by_side([PARIS, BOB], ["before", "after"], title="Two <neurons>")
    one, two = view._repr_html_(), view._repr_html_()
    for fragment in (one, two):
        assert not re.search(r"<(html|head|body)\b", fragment)
        assert re.search(r"<div\b[^>]*/>", fragment) is None
        assert '<div class="np-title">Two &lt;neurons&gt;</div>' in fragment
        assert "unpkg.com" not in fragment and "sourceMappingURL" not in fragment
        assert not re.search(r"\b(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//", fragment)
        assert len(view_boxes(fragment)) == 2
    # The same object displayed twice gets ids of its own each time.
    assert not set(view_boxes(one)) & set(view_boxes(two))
    roots = [re.search(r'class="np-inline" id="([\w-]+)"', f)[1] for f in (one, two)]
    assert roots[0] != roots[1]
    # Styles touch the fragment only: every rule is under .np-inline.
    for selectors in re.findall(r"([^{}]+)\{", NOTEBOOK_CSS):
        assert all(s.strip().startswith(".np-inline") for s in selectors.split(",")), selectors
    # Token text is escaped in the props: the hostile token cannot become an element.
    assert HOSTILE not in one
    blocks = re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', one, re.DOTALL)
    tokens = [json.loads(block)["tokens"] for block in blocks]
    assert tokens[1][0][2] == html.escape(HOSTILE, quote=False)


def test_a_page_with_figures_displays_as_a_frame_of_the_whole_page() -> None:
    page = HtmlPage("Report & <figures>")
    page.plotly(go.Figure(go.Scatter(x=[0, 1], y=[1, 0])))
    page.circuitsvis(
        "TextNeuronActivations", text_neuron_activations_props(["a"], np.ones((1, 1, 1)))
    )
    frame = page._repr_html_()
    srcdoc = re.fullmatch(
        r'<iframe class="np-page" title="([^"]*)" style="[^"]*" srcdoc="([^"]*)"></iframe>', frame
    )
    assert srcdoc is not None
    assert html.unescape(srcdoc[1]) == "Report & <figures>"
    assert html.unescape(srcdoc[2]) == page.to_html()
    with pytest.raises(ValueError, match="frame"):
        page.to_fragment()
    # Without figures the page is a fragment like any view.
    plain = HtmlPage("plain")
    plain.circuitsvis(
        "TextNeuronActivations", text_neuron_activations_props(["a"], np.ones((1, 1, 1)))
    )
    assert plain._repr_html_().startswith("<script>") and 'class="np-inline"' in plain._repr_html_()


def test_ranking_table_lists_the_most_salient_live_neurons() -> None:
    scores = torch.tensor([[0.1, 0.9, float("nan")], [0.5, 0.3, 0.7]])
    ranking = Ranking("LOC", "probeless", scores)
    names = ("O", "LOC", "PER")
    top_token = torch.arange(2 * 3 * 2).view(2, 3, 2)
    top_label = torch.tensor([[[1, 0], [1, 2], [0, 0]], [[2, 2], [0, 1], [1, 1]]])
    zeros = torch.zeros(3, 2, 3, dtype=torch.float64)
    stats = NeuronStats(
        names, torch.zeros(3, dtype=torch.long), zeros, zeros, top_token.float(),
        top_token, top_token, top_token, top_label,
    )  # fmt: skip
    tokenizer = SimpleNamespace(decode=lambda ids: f" tok{ids[0]}")
    table = ranking_table(ranking, stats, tokenizer, n=3)
    frame = table.frame
    assert list(zip(frame["layer"], frame["neuron"], strict=True)) == [(0, 1), (1, 2), (1, 0)]
    assert frame["#"].tolist() == [1, 2, 3]
    assert frame["score"].tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert frame["saliency"].tolist() == pytest.approx([1.0, 0.75, 0.5])  # 5 live neurons
    assert frame["top tokens"].tolist() == [
        "tok2 (LOC), tok3 (PER)",
        "tok10 (LOC), tok11 (LOC)",
        "tok6 (PER), tok7 (PER)",
    ]
    assert table.title == "Top 3 neurons for LOC (probeless)"
    fragment = table._repr_html_()
    assert "tok10 (LOC), tok11 (LOC)" in fragment and "<table" in fragment
    assert "tok2 (LOC)" in str(table)
    # All live neurons at most; the dead one never appears.
    assert len(ranking_table(ranking, n=50).frame) == 5
    with pytest.raises(NeuroplasticError, match="positive"):
        ranking_table(ranking, n=0)
    wrong = NeuronStats.empty(names, 3, 3, 2)
    with pytest.raises(NeuroplasticError, match="another shape"):
        ranking_table(ranking, wrong, tokenizer)


def test_neuron_view_text_and_bad_input() -> None:
    view = side_by_side([PARIS, BOB], ["before", "after"], title="T")
    assert view.neurons == [(1, 2), (3, 4)]
    assert repr(view) == "NeuronView(2 neurons: L1:N2, L3:N4, side by side)"
    assert str(view).splitlines() == [
        "T",
        "before: Paris (LOC 1), The (O 0.5)",
        f"after: {HOSTILE.strip()} (LOC 1), Alice (O 0.5)".replace(HOSTILE.strip(), "Bob"),
    ]
    with pytest.raises(NeuroplasticError, match="2 headings for 1 neurons"):
        NeuronView([PARIS], headings=["a", "b"])
    with pytest.raises(NeuroplasticError, match="no neurons"):
        NeuronView([])


def test_show_prints_in_a_script_and_displays_in_a_kernel(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    figure = go.Figure(layout={"title": {"text": "F1"}})
    show(BOB, figure)
    assert capsys.readouterr().out.splitlines() == [
        "L3:N4: Bob (LOC 1), Alice (O 0.5)",
        "[figure: F1; open this as a notebook to see it]",
    ]
    shown: list[object] = []
    import IPython.display

    monkeypatch.setattr(views, "_kernel_shell", lambda: object())
    monkeypatch.setattr(IPython.display, "display", shown.append)
    show(BOB, figure)
    assert shown[0] is BOB and capsys.readouterr().out == ""
    assert isinstance(shown[1], views.InlineFigure) and shown[1].figure is figure


def test_rank_result_displays_its_table(tiny_gpt2, corpus) -> None:
    result = rank_neurons(tiny_gpt2, limit=30, top_k_tokens=4, progress=False)
    fragment = result._repr_html_()
    first = result.rows[0]
    assert f"<td>{first['layer']}</td>" in fragment and f"<td>{first['neuron']}</td>" in fragment
    assert "top 20 neurons for LOC (probeless)" in fragment
    top = result.table(3).frame
    assert list(zip(top["layer"], top["neuron"], strict=True)) == result.ranking.top(3)


def test_tag_sentence_refuses_a_sentence_out_of_range(tiny_bert, corpus) -> None:
    data = encode_split(corpus, tiny_bert.tokenizer, "validation", limit=3)
    with pytest.raises(NeuroplasticError, match="out of range: the dataset has 3"):
        tag_sentence(None, data, 3)


# ---------------------------------------------------------------------------------------------
# In a browser
# ---------------------------------------------------------------------------------------------

EVALUATE = {
    "drawn": "Array.from(document.querySelectorAll('.np-cv')).map(e => e.childElementCount > 0)",
    "pwned": "window.__pwned === undefined ? null : window.__pwned",
    "frame": """(() => {
        const frame = document.querySelector('iframe.np-page');
        if (!frame) return null;
        const doc = frame.contentDocument;
        return {
            views: doc.querySelectorAll('.np-cv').length,
            drawn: Array.from(doc.querySelectorAll('.np-cv')).filter(
                e => e.childElementCount > 0).length,
            plots: Array.from(doc.querySelectorAll('.plotly-graph-div')).filter(
                e => e.querySelector('svg.main-svg')).length,
        };
    })()""",
}
SELECTORS = [".np-cv", ".np-cv:empty", ".np-waiting", ".np-error", ".np-inline"]


@pytest.fixture(scope="module")
def chrome() -> Iterator[Chromium]:
    with Chromium() as browser:
        yield browser


def notebook_outputs() -> tuple[list[str], int]:
    """Cell outputs of a notebook session, in order, and how many views they draw."""
    reset_notebook_bundle()
    outputs = [
        RankingTable(pd.DataFrame({"layer": [1], "neuron": [2]}), "Top neurons")._repr_html_(),
        NeuronView([PARIS], title="first view: carries the bundle")._repr_html_(),
        side_by_side([PARIS, BOB], ["before", "after"])._repr_html_(),
        BOB._repr_html_(),
        BOB._repr_html_(),  # the same object displayed again
    ]
    outputs.append(outputs[2])  # a duplicated cell: the very same output, ids and all
    report = HtmlPage("Report")
    report.plotly(go.Figure(go.Bar(x=["a", "b"], y=[1, 2])))
    report.circuitsvis("ColoredTokens", {"tokens": ["a", "b"], "values": [0.1, 0.9]})
    outputs.append(report._repr_html_())
    return outputs, 1 + 2 + 1 + 1 + 2


def saved_notebook(outputs: list[str], path: Path) -> Path:
    cells = "\n".join(f'<div class="jp-OutputArea-output">\n{o}\n</div>' for o in outputs)
    path.write_text(
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>notebook</title></head>'
        f"<body>\n{cells}\n</body></html>\n",
        encoding="utf-8",
    )
    return path


def assert_all_drawn(rendered: Rendered, n_views: int) -> None:
    assert rendered.console_errors == []
    assert rendered.external_requests == [] and rendered.failed_requests == []
    assert rendered.values["pwned"] is None
    assert rendered.count(".np-cv") == n_views
    assert rendered.count(".np-cv:empty") == rendered.count(".np-waiting") == 0
    assert rendered.count(".np-error") == 0
    assert rendered.values["drawn"] == [True] * n_views
    for label in ("before", "after", "L1:N2", "L3:N4", "Paris", "Berlin", "Bob", HOSTILE):
        assert label.replace(" ", "\xa0") in rendered.text.replace(" ", "\xa0"), label
    assert rendered.values["frame"] == {"views": 1, "drawn": 1, "plots": 1}


@pytest.mark.browser
def test_a_saved_notebook_draws_every_view_offline(chrome: Chromium, tmp_path: Path) -> None:
    outputs, n_views = notebook_outputs()
    assert [o.count(BUNDLE) for o in outputs[:-1]] == [0, 1, 0, 0, 0, 0]
    page = saved_notebook(outputs, tmp_path / "notebook.html")
    rendered = chrome.render(page, wait_ms=30_000, selectors=SELECTORS, evaluate=EVALUATE)
    assert_all_drawn(rendered, n_views)
    assert rendered.count(".np-inline") == len(outputs) - 1


@pytest.mark.browser
def test_outputs_attached_out_of_order_still_draw(chrome: Chromium, tmp_path: Path) -> None:
    """As JupyterLab does: each output's HTML set on a detached node, its scripts re-created,
    and the nodes attached later, here the last first (a frontend that virtualises cells)."""
    outputs, n_views = notebook_outputs()
    data = json.dumps(outputs).replace("<", "\\u003c")
    page = tmp_path / "lab.html"
    page.write_text(
        f"""<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<div id="cells"></div>
<script type="application/json" id="outputs">{data}</script>
<script>
const outputs = JSON.parse(document.getElementById("outputs").textContent);
const cells = document.getElementById("cells");
const slots = outputs.map(() => cells.appendChild(document.createElement("div")));
const hosts = outputs.map((source) => {{
  const host = document.createElement("div");
  host.innerHTML = source;
  for (const old of Array.from(host.querySelectorAll("script"))) {{
    const script = document.createElement("script");
    for (const attribute of Array.from(old.attributes)) {{
      script.setAttribute(attribute.name, attribute.value);
    }}
    script.textContent = old.textContent;
    old.parentNode.replaceChild(script, old);
  }}
  return host;
}});
hosts.map((host, i) => i).reverse().forEach((i, n) => {{
  setTimeout(() => slots[i].appendChild(hosts[i]), 30 * n);
}});
</script></body></html>
""",
        encoding="utf-8",
    )
    rendered = chrome.render(page, wait_ms=30_000, selectors=SELECTORS, evaluate=EVALUATE)
    assert_all_drawn(rendered, n_views)


@pytest.mark.browser
def test_a_view_without_the_bundle_says_what_to_do(chrome: Chromium, tmp_path: Path) -> None:
    NeuronView([PARIS])._repr_html_()  # the first output, since cleared
    orphan = side_by_side([PARIS, BOB])._repr_html_()
    page = saved_notebook([orphan], tmp_path / "cleared.html")
    rendered = chrome.render(page, wait_ms=15_000, selectors=SELECTORS, evaluate=EVALUATE)
    assert rendered.console_errors == [] and rendered.external_requests == []
    assert rendered.count(".np-waiting") == 2 and rendered.count(".np-error") == 0
    assert rendered.text.count("neuroplastic.report.html.reset_notebook_bundle()") == 2
    # Re-running the cell after reset_notebook_bundle() draws it.
    reset_notebook_bundle()
    again = saved_notebook([orphan, side_by_side([PARIS, BOB])._repr_html_()], page)
    rendered = chrome.render(again, wait_ms=15_000, selectors=SELECTORS, evaluate=EVALUATE)
    assert rendered.console_errors == []
    assert rendered.count(".np-cv") == 4 and rendered.count(".np-waiting") == 0
    assert rendered.values["drawn"] == [True] * 4
