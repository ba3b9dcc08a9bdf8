"""Tests of the offline HTML page builder; the browser tests render a real page in Chromium."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from browser import Rendered, render

from neuroplastic.report.html import (
    HtmlPage,
    circuitsvis_bundle_path,
    expand_self_closing_divs,
    json_for_script,
    text_neuron_activations_props,
)

SCRIPT_TOKEN = "<script>window.__pwned = 1</script>"
IMG_TOKEN = '<img src="https://example.invalid/x.png" onerror="window.__pwned = 2">'
TOKENS = ["Paris", " is", " in", SCRIPT_TOKEN, " &", ' "France"', IMG_TOKEN, "<|endoftext|>"]


def _json_blocks(page_html: str) -> list[tuple[str, str, Any]]:
    """(component, target id, props) of every CircuitsVis view in a page's source."""
    pattern = re.compile(
        r'<script type="application/json" data-circuitsvis="(\w+)" '
        r'data-target="([\w-]+)">(.*?)</script>',
        re.DOTALL,
    )
    return [(c, t, json.loads(data)) for c, t, data in pattern.findall(page_html)]


def _activations(tokens: list[str], values: Any = None) -> dict[str, Any]:
    """Props of a one-neuron TextNeuronActivations view of ``tokens``."""
    values = np.arange(float(len(tokens))) if values is None else np.asarray(values, float)
    return text_neuron_activations_props(tokens, values.reshape(-1, 1, 1))


def _bundle_marker() -> str:
    """A string that occurs once in the CircuitsVis bundle."""
    return "var CircuitsVis="


# ---------------------------------------------------------------------------------------------
# Unit tests (no browser)
# ---------------------------------------------------------------------------------------------


def test_expand_self_closing_divs() -> None:
    cv_style = '<div id="circuits-vis-1" style="margin: 15px 0;"/>\n<div id="b" />x<div/>'
    assert expand_self_closing_divs(cv_style) == (
        '<div id="circuits-vis-1" style="margin: 15px 0;"></div>\n<div id="b"></div>x<div></div>'
    )
    assert expand_self_closing_divs("<div>a</div><br/>") == "<div>a</div><br/>"


def test_raw_html_gets_closed_divs() -> None:
    page = HtmlPage("t")
    page.raw('<div id="circuits-vis-abc" style="margin: 15px 0;"/>')
    assert '<div id="circuits-vis-abc" style="margin: 15px 0;"></div>' in page.to_html()


def test_json_for_script_cannot_break_out_of_the_script_element() -> None:
    value = {"tokens": ["</script><script>alert(1)</script>", "<!--", "a & b", "\u2028"]}
    text = json_for_script(value)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == value
    assert json.loads(json_for_script([np.float32(1.5), np.nan, np.inf, (1, 2)])) == [
        1.5,
        None,
        None,
        [1, 2],
    ]


def test_text_is_escaped_and_views_are_well_formed() -> None:
    page = HtmlPage('Report <b>"bold"</b> & co')
    page.heading("<h2>head</h2>", level=3)
    page.paragraph("1 < 2 & </p><script>alert(1)</script>")
    first = page.circuitsvis("TextNeuronActivations", _activations(TOKENS))
    second = page.circuitsvis("TextNeuronActivations", _activations(["a"]))
    source = page.to_html()

    assert "<title>Report &lt;b&gt;&quot;bold&quot;&lt;/b&gt; &amp; co</title>" in source
    assert "<h3>&lt;h2&gt;head&lt;/h2&gt;</h3>" in source
    assert "<p>1 &lt; 2 &amp; &lt;/p&gt;&lt;script&gt;alert(1)&lt;/script&gt;</p>" in source
    assert "alert(1)</script>" not in source
    # Distinct ids, explicit closing tags: no self-closing div anywhere.
    assert first != second
    assert re.search(r"<div\b[^>]*/>", source) is None
    component = "TextNeuronActivations"
    for view_id in (first, second):
        assert f'<div id="{view_id}" class="np-cv" data-component="{component}"></div>' in source
    # The props survive the trip through the page unchanged.
    blocks = _json_blocks(source)
    assert [(c, t) for c, t, _ in blocks] == [(component, first), (component, second)]
    assert blocks[0][2]["tokens"][3] == "&lt;script&gt;window.__pwned = 1&lt;/script&gt;"
    assert blocks[0][2]["activations"] == [[[float(i)]] for i in range(8)]


def test_tokens_are_html_escaped_for_circuitsvis_unless_asked_not_to() -> None:
    props = _activations(["<b>", "&", "a b"])
    assert props["tokens"] == ["&lt;b&gt;", "&amp;", "a b"]
    raw = text_neuron_activations_props(["<b>"], np.zeros((1, 1, 1)), escape_tokens=False)
    assert raw["tokens"] == ["<b>"]
    several = text_neuron_activations_props(
        [["<i>"], ["x", "&"]], [np.zeros((1, 1, 1)), np.zeros((2, 1, 1))]
    )
    assert several["tokens"] == [["&lt;i&gt;"], ["x", "&amp;"]]


def test_bundles_are_inlined_once_and_only_when_needed() -> None:
    empty = HtmlPage("nothing").to_html()
    assert _bundle_marker() not in empty
    assert "Plotly" not in empty

    page = HtmlPage("many")
    for _ in range(3):
        page.circuitsvis("TextNeuronActivations", _activations(["a", "b"]))
    for _ in range(2):
        page.plotly(go.Figure(go.Scatter(x=[0, 1], y=[1, 0])))
    source = page.to_html()
    assert source.count(_bundle_marker()) == 1
    assert circuitsvis_bundle_path().name == "iife.js"
    assert source.count("plotly.js v") == 1  # the licence banner of plotly.min.js
    assert source.count('class="plotly-graph-div"') == 2
    assert "sourceMappingURL" not in source
    _assert_no_remote_resources(source)


def test_table_escapes_and_has_caption() -> None:
    df = pd.DataFrame({"neuron <id>": [3, 7], "token": ["<b>", "a & b"], "score": [0.123456, 2]})
    page = HtmlPage("t")
    page.table(df, caption="Top <neurons>", index=False)
    source = page.to_html()
    assert "<caption>Top &lt;neurons&gt;</caption>" in source
    assert "<th>neuron &lt;id&gt;</th>" in source
    assert "<td>&lt;b&gt;</td>" in source and "<td>a &amp; b</td>" in source
    assert "<td>0.1235</td>" in source


def test_details_nest_blocks() -> None:
    page = HtmlPage("t")
    with page.details("Outer <x>", open=True):
        page.paragraph("inside")
        with page.details("Inner"):
            page.paragraph("deeper")
    page.paragraph("after")
    source = page.to_html()
    assert re.search(
        r"<details open>\s*<summary>Outer &lt;x&gt;</summary>\s*<p>inside</p>\s*"
        r"<details>\s*<summary>Inner</summary>\s*<p>deeper</p>\s*</details>\s*</details>\s*"
        r"<p>after</p>",
        source,
    )


def test_bad_input_is_rejected() -> None:
    page = HtmlPage("t")
    with pytest.raises(ValueError, match="unknown CircuitsVis component"):
        page.circuitsvis("NoSuchThing", {})
    with pytest.raises(ValueError, match="level"):
        page.heading("x", level=7)
    with pytest.raises(ValueError, match="2 tokens but activations has 1 positions"):
        text_neuron_activations_props(["a", "b"], np.zeros((1, 1, 1)))
    with pytest.raises(ValueError, match="3 dimensions"):
        text_neuron_activations_props(["a"], np.zeros((1, 2)))
    with page.details("open"), pytest.raises(RuntimeError):
        page.to_html()


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "report.html"
    page = HtmlPage("v1")
    assert page.write(target) == target
    page.title = "v2"
    page.write(target)
    assert "<title>v2</title>" in target.read_text(encoding="utf-8")
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"]


# Each case: (arguments of text_neuron_activations_props and of the circuitsvis function).
def _mirror_cases() -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    toks = ["The", " city", " of", " Paris"]
    return [
        {"tokens": toks, "activations": rng.random((4, 2, 3)), "first_dimension_labels": None},
        {
            "tokens": [toks, toks[:2]],
            "activations": [rng.random((4, 2, 3)), rng.random((2, 2, 3))],
            "second_dimension_labels": ["n0", "n1", "n2"],
        },
    ]


@pytest.mark.parametrize("case", range(len(_mirror_cases())))
def test_props_match_what_circuitsvis_sends(case: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our props equal the JSON the circuitsvis Python function hands to its component."""
    import circuitsvis.activations as module
    from circuitsvis.utils.convert_props import convert_props

    kwargs = _mirror_cases()[case]
    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(module, "render", lambda name, **props: sent.append((name, props)))
    module.text_neuron_activations(**kwargs)

    [(name, props)] = sent
    assert name == "TextNeuronActivations"
    ours = text_neuron_activations_props(**kwargs)
    assert json.loads(json_for_script(ours)) == json.loads(convert_props(props))


def _assert_no_remote_resources(source: str) -> None:
    """No element loads anything from the network, and no CDN loader is emitted."""
    assert "unpkg.com" not in source
    assert "esm.js" not in source
    remote = re.findall(
        r"<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//",
        source,
        flags=re.IGNORECASE,
    )
    assert remote == []


# ---------------------------------------------------------------------------------------------
# Browser test: one page, rendered once, inspected by several tests
# ---------------------------------------------------------------------------------------------

N_VIEWS = 4
N_PLOTS = 2


@pytest.fixture(scope="module")
def page_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(1)
    page = HtmlPage("Offline report with <b>markup</b> & views")
    page.heading("Token activations")
    page.paragraph("Tokens below contain <script> tags, ampersands & quotes.")
    page.circuitsvis(
        "TextNeuronActivations",
        text_neuron_activations_props(TOKENS, rng.random((len(TOKENS), 2, 4))),
    )
    # Any component's props, as CircuitsVis takes them (tokens escaped by the caller).
    page.circuitsvis(
        "ColoredTokens",
        {
            "tokens": [html.escape(t, quote=False) for t in TOKENS],
            "values": np.linspace(-1.0, 1.0, len(TOKENS)),
        },
    )
    with page.details("More views (collapsed)"):
        page.circuitsvis(
            "TextNeuronActivations",
            text_neuron_activations_props(
                [TOKENS[:3], ["Berlin", " &lt;"]], [rng.random((3, 1, 2)), rng.random((2, 1, 2))]
            ),
        )
        page.plotly(go.Figure(go.Bar(x=["<b>a</b>", "b"], y=[1, 2]), layout={"height": 300}))
    page.circuitsvis(
        "TextNeuronActivations",
        text_neuron_activations_props(
            [TOKENS[::-1]], [rng.random((len(TOKENS), 1, 3))], second_dimension_labels=list("abc")
        ),
    )
    page.heading("Recovery")
    page.plotly(go.Figure(go.Scatter(x=[0, 1, 2], y=[0.9, 0.1, 0.85], name="F1 </script>")))
    page.table(pd.DataFrame({"stage": ["base", "pruned"], "f1": [0.93, 0.05]}), caption="F1")
    return page.write(tmp_path_factory.mktemp("page") / "report.html")


@pytest.fixture(scope="module")
def rendered(page_file: Path) -> Rendered:
    return render(
        page_file,
        wait_ms=15_000,
        selectors=[".np-cv", ".np-cv:empty", ".np-error", ".plotly-graph-div", ".main-svg"],
        evaluate={
            "pwned": "window.__pwned === undefined ? null : window.__pwned",
            "views_with_children": (
                "Array.from(document.querySelectorAll('.np-cv'))"
                ".map(el => el.id + ':' + el.childElementCount)"
            ),
            "plots_with_svg": (
                "Array.from(document.querySelectorAll('.plotly-graph-div'))"
                ".filter(el => el.querySelector('svg.main-svg') !== null).length"
            ),
            "view_text": (
                "Array.from(document.querySelectorAll('.np-cv')).map(el => el.textContent)"
            ),
            "injected": "document.querySelectorAll('.np-cv img, .np-cv script').length",
        },
    )


@pytest.mark.browser
def test_page_source_is_offline_and_inlines_each_bundle_once(page_file: Path) -> None:
    source = page_file.read_text(encoding="utf-8")
    assert source.count(_bundle_marker()) == 1
    assert source.count("plotly.js v") == 1
    _assert_no_remote_resources(source)


@pytest.mark.browser
def test_no_errors_and_no_network(rendered: Rendered) -> None:
    assert rendered.console_errors == []
    assert rendered.external_requests == []
    assert rendered.failed_requests == []
    assert all(url.startswith(("file:", "data:", "blob:")) for url in rendered.requests)
    assert rendered.settled


@pytest.mark.browser
def test_every_circuitsvis_view_renders(rendered: Rendered) -> None:
    assert rendered.count(".np-cv") == N_VIEWS
    assert rendered.count(".np-cv:empty") == 0
    assert rendered.count(".np-error") == 0
    counts = rendered.values["views_with_children"]
    assert len(counts) == N_VIEWS and all(not c.endswith(":0") for c in counts), counts


@pytest.mark.browser
def test_tokens_display_literally_and_inject_nothing(rendered: Rendered) -> None:
    texts: list[str] = rendered.values["view_text"]
    # TextNeuronActivations and ColoredTokens each show tokens as text.
    for text in (texts[0], texts[1], texts[3]):
        for token in ("Paris", SCRIPT_TOKEN, IMG_TOKEN, "<|endoftext|>", "&", '"France"'):
            assert token.replace(" ", "\xa0") in text, (token, text)
    assert "Berlin" in texts[2] and "&lt;" in texts[2]
    assert rendered.values["injected"] == 0
    assert rendered.values["pwned"] is None
    assert "Paris" in rendered.text


@pytest.mark.browser
def test_every_plotly_figure_renders(rendered: Rendered) -> None:
    assert rendered.count(".plotly-graph-div") == N_PLOTS
    assert rendered.values["plots_with_svg"] == N_PLOTS
    assert rendered.count(".main-svg") >= N_PLOTS
    assert "Offline report with <b>markup</b> & views" == rendered.title


def test_a_figure_shown_in_a_notebook_carries_plotlys_mimetype_and_an_offline_frame() -> None:
    from neuroplastic.report.views import InlineFigure

    figure = go.Figure(go.Scatter(x=[0, 1, 2], y=[0.1, 0.5, 0.9]), layout={"title": "LOC F1"})
    bundle = InlineFigure(figure)._repr_mimebundle_()
    # The mimetype a JupyterLab extension or VS Code draws: the figure's own data.
    assert bundle["application/vnd.plotly.v1+json"]["data"][0]["y"] == [0.1, 0.5, 0.9]
    # Elsewhere (nbconvert's HTML): a frame holding plotly.js itself, so nothing is fetched.
    frame = bundle["text/html"]
    assert frame.startswith('<iframe class="np-page"') and 'title="LOC F1"' in frame
    document = html.unescape(re.search(r'srcdoc="([^"]*)"', frame)[1])
    assert "plotly-graph-div" in document and "Plotly.newPlot" in document
    assert not re.search(r'<script[^>]+src="https?:', document)
    assert bundle["text/plain"] == "<figure: LOC F1>"


def test_a_neuron_view_colours_magnitude_not_gelus_negative_floor() -> None:
    from neuroplastic.report.views import NeuronExamples, NeuronView

    # GELU's floor (-0.17) beside a peak of 5.16: CircuitsVis would scale -0.17 to full colour.
    values = np.array([-0.17, 5.16, 1.74, 0.0], dtype=np.float32)
    top = pd.DataFrame(
        {"k": [0], "value": [5.16], "sentence": [0], "position": [1], "token": ["Paris"],
         "label": ["LOC"]}
    )  # fmt: skip
    examples = NeuronExamples(0, 3, "L0:N3", [["in", "Paris", "and", "Rome"]], [values], top,
                              full=True)  # fmt: skip
    document = NeuronView([examples]).page().to_html()
    blocks = re.findall(r'<script type="application/json" data-circuitsvis[^>]*>(.*?)</script>',
                        document, flags=re.S)  # fmt: skip
    drawn = [json.loads(html.unescape(b))["activations"] for b in blocks]
    flat = [v for props in drawn for v in np.asarray(props[0], dtype=float).ravel()]
    assert min(flat) == 0.0 and max(flat) == pytest.approx(5.16, rel=1e-6)
    assert sorted(flat) == pytest.approx([0.0, 0.0, 1.74, 5.16], rel=1e-6)
    assert "negative activations (here down to -0.17) show as 0" in document
    assert examples.activations[0][0] == pytest.approx(-0.17)  # the data itself is untouched
