"""Self-contained, offline HTML pages with tables, Plotly figures and CircuitsVis views.

A page is built block by block and written as one file that opens from ``file://`` with no
network: plotly.js and the CircuitsVis browser bundle are inlined, each at most once per page and
only when the page uses it.

CircuitsVis (1.43) ships an IIFE bundle (``circuitsvis/dist/cdn/iife.js``) that defines the global
``window.CircuitsVis`` with every React component (``TextNeuronActivations``, ``ColoredTokens``,
``TopkTokens``, ...) and ``render(elementId, Component, props)``. Its own Python helpers either load
that bundle from a CDN (blank offline) or inline the 1.3 MB bundle once per view, and emit
``<div id=... />``, which HTML parses as an *open* div, so only the first of several views renders.
Here each view is an empty ``<div id=...></div>`` plus its props in a
``<script type="application/json">`` block; one bootstrap script after the single inlined bundle
renders every view.

:func:`text_neuron_activations_props` builds the props the Python
``circuitsvis.activations.text_neuron_activations`` sends to its React component (camelCase names,
arrays as nested lists, ``None`` options left out), without importing ``circuitsvis`` (which
imports torch); :meth:`HtmlPage.circuitsvis` takes any component's props in that form. Two
deliberate differences:

* Token strings are HTML-escaped (``escape_tokens=True``). The CircuitsVis components insert each
  token with ``dangerouslySetInnerHTML`` (after turning whitespace into ``&nbsp;``), so a raw
  ``<|endoftext|>`` or ``</b>`` token vanishes or breaks the layout, and a token such as
  ``<img src=... onerror=...>`` would run code or fetch from the network.
* Non-finite floats (NaN, inf) become ``null``, because the props travel as strict JSON.

In a notebook (JupyterLab, Notebook, VS Code, nbconvert's HTML export) every cell's output lands
in one page, so the views of a whole notebook share one bundle: :meth:`HtmlPage.to_fragment` gives
a page's body as a cell output, and the first fragment of a Python session carries the bundle in a
script that defines ``window.CircuitsVis`` only if it is not defined yet. Every fragment draws its
own views as soon as ``window.CircuitsVis`` exists, or queues them until the bundle arrives
(frontends may run outputs' scripts out of order). A saved notebook keeps the first fragment's
bundle in its output, so it draws again when reopened. :func:`reset_notebook_bundle` sends the
bundle again after that output was cleared. A page with Plotly figures (a report) displays as an
isolated ``<iframe srcdoc>`` of the whole document instead (:meth:`HtmlPage.to_iframe`).
``_repr_html_`` picks one of the two.

Example::

    page = HtmlPage("Relearning report")
    page.heading("Where the concept went")
    page.paragraph("Top-activating tokens per pruned neuron.")
    page.circuitsvis(
        "TextNeuronActivations", text_neuron_activations_props(tokens, activations)
    )
    with page.details("Per-layer saliency"):
        page.plotly(fig)
        page.table(df, caption="Saliency by layer")
    page.write("out/report.html")
"""

from __future__ import annotations

import html as _html
import importlib.util
import json
import math
import os
import re
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neuroplastic.errors import NeuroplasticError

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

__all__ = [
    "CIRCUITSVIS_COMPONENTS",
    "HtmlPage",
    "circuitsvis_bundle_path",
    "expand_self_closing_divs",
    "json_for_script",
    "reset_notebook_bundle",
    "text_neuron_activations_props",
]


def _asset(name: str) -> str:
    """A stylesheet or script of the pages, kept as a file in ``report/assets``."""
    return files("neuroplastic.report").joinpath("assets", name).read_text("utf-8")


#: Components exported on ``window.CircuitsVis`` by the circuitsvis 1.43 bundle.
CIRCUITSVIS_COMPONENTS: frozenset[str] = frozenset(
    {
        "AttentionHeads",
        "AttentionPattern",
        "AttentionPatterns",
        "ColoredTokens",
        "ColoredTokensMulti",
        "Hello",
        "TextNeuronActivations",
        "TokenLogProbs",
        "TopkSamples",
        "TopkTokens",
    }
)

CSS = _asset("page.css")

# Renders every CircuitsVis view declared on the page. Runs once, after the bundle.
_CIRCUITSVIS_BOOTSTRAP = _asset("circuitsvis_bootstrap.js")

# Plotly sizes a figure from its container; a figure drawn inside a closed <details> gets a
# wrong width, so resize figures when their <details> opens. "toggle" does not bubble: capture.
_PLOTLY_TOGGLE_RESIZE = _asset("plotly_toggle_resize.js")

# Notebook fragments share the notebook's page: every rule is scoped to .np-inline, and colours
# are translucent greys that read on light and dark themes alike.
NOTEBOOK_CSS = _asset("notebook.css")

# Shown in a view's box before any script ran: trusted-only frontends strip scripts.
_VIEW_NEEDS_SCRIPTS = (
    "This CircuitsVis view draws when the notebook's scripts run (trust the notebook)."
)

# Runs in every fragment: draw this fragment's views now, or queue them until the bundle is on
# the page. The root is found through the script's own parent (robust to a duplicated output,
# whose ids repeat) or else by id (frontends that run scripts detached, e.g. classic Notebook).
# Each view gets a fresh id before drawing: CircuitsVis.render looks its box up page-wide.
_NOTEBOOK_DRAW = _asset("notebook_draw.js")

_VIEW_WAITING = (
    "Waiting for the CircuitsVis bundle, which the first neuroplastic view of this notebook "
    "carries. If this stays, that output was cleared or this frontend isolates outputs: run "
    "neuroplastic.report.html.reset_notebook_bundle() and re-run this cell."
)

# The first fragment of a session: define window.CircuitsVis unless the page has it, then draw
# every queued view. Wrapped in a function whose parameters shadow AMD/CommonJS globals
# (classic Notebook's require.js) so the bundle always defines a plain global.
_NOTEBOOK_BUNDLE_HEAD = _asset("notebook_bundle_head.js")
_NOTEBOOK_BUNDLE_TAIL = _asset("notebook_bundle_tail.js")

# Whether this Python session already sent the bundle to the notebook page.
_notebook_state = {"bundle_sent": False}


def reset_notebook_bundle() -> None:
    """Make the next notebook view carry the CircuitsVis bundle again.

    Needed only when the output that carried it was cleared and the page reloaded: views then
    say so instead of drawing. Re-run the view's cell after calling this.
    """
    _notebook_state["bundle_sent"] = False


def _bundle_for_this_output() -> bool:
    """True for the first fragment of the session, and for every fragment where each output is
    its own frame (Google Colab), so no output can rely on another's script."""
    if "google.colab" in sys.modules:
        return True
    return not _notebook_state["bundle_sent"]


# A view's empty box as HtmlPage.circuitsvis writes it.
_VIEW_BOX = re.compile(r'(<div id="[\w-]+" class="np-cv)(" data-component="\w+">)(</div>)')
_SELF_CLOSING_DIV = re.compile(r"<div\b([^<>]*?)\s*/>", re.IGNORECASE)
_CLOSE_SCRIPT = re.compile(r"</(script)", re.IGNORECASE)
_SOURCE_MAP = re.compile(r"^//# sourceMappingURL=.*$", re.MULTILINE)


# --------------------------------------------------------------------------------------------
# Escaping helpers
# --------------------------------------------------------------------------------------------


def expand_self_closing_divs(html: str) -> str:
    """Rewrite ``<div .../>`` (which HTML parses as an unclosed div) as ``<div ...></div>``."""
    return _SELF_CLOSING_DIV.sub(r"<div\1></div>", html)


def json_for_script(value: Any) -> str:
    """Serialise ``value`` as strict JSON that is safe inside an HTML ``<script>`` element.

    ``<``, ``>`` and ``&`` can only occur inside JSON strings, where ``\\u003c`` etc. decode to
    the same characters, so ``</script>`` or ``<!--`` in user text cannot end or corrupt the
    script element. Non-finite floats become ``null``.
    """
    text = json.dumps(_jsonable(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _inline_script(js: str) -> str:
    """Make third-party JavaScript safe to place inside ``<script>...</script>``.

    ``</script`` can only occur in a string, template or regex literal, or a comment, where
    ``<\\/script`` means the same thing.
    """
    return _CLOSE_SCRIPT.sub(r"<\\/\1", js)


def _jsonable(value: Any) -> Any:
    """Convert numpy / torch values (anything with ``tolist``) and tuples to plain JSON types."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"prop keys must be strings, got {key!r}")
            out[key] = _jsonable(item)
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return _jsonable(value.tolist())
    raise TypeError(f"cannot convert {type(value).__name__} to JSON for the page")


# --------------------------------------------------------------------------------------------
# Inlined JavaScript
# --------------------------------------------------------------------------------------------


def circuitsvis_bundle_path() -> Path:
    """The installed CircuitsVis browser bundle (``circuitsvis/dist/cdn/iife.js``).

    Found without importing ``circuitsvis`` (its ``__init__`` imports torch).
    """
    spec = importlib.util.find_spec("circuitsvis")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "dist" / "cdn" / "iife.js"
        if candidate.is_file():
            return candidate
    raise NeuroplasticError(
        "The CircuitsVis browser bundle (circuitsvis/dist/cdn/iife.js) was not found; "
        "install it with `pip install 'circuitsvis>=1.43'`."
    )


@lru_cache(maxsize=1)
def _circuitsvis_js() -> str:
    js = circuitsvis_bundle_path().read_text(encoding="utf-8")
    # The .map file sits next to the bundle, not next to the page; drop the dangling reference.
    return _inline_script(_SOURCE_MAP.sub("", js))


@lru_cache(maxsize=1)
def _notebook_bundle_js() -> str:
    """The CircuitsVis bundle as a script that defines ``window.CircuitsVis`` once per page."""
    js = _circuitsvis_js()
    if "var CircuitsVis=" not in js:
        raise NeuroplasticError(
            f"{circuitsvis_bundle_path()} does not define CircuitsVis as expected; install "
            "`circuitsvis>=1.43`"
        )
    return _NOTEBOOK_BUNDLE_HEAD + js + _NOTEBOOK_BUNDLE_TAIL


@lru_cache(maxsize=1)
def _plotly_js() -> str:
    import plotly.offline

    return _inline_script(plotly.offline.get_plotlyjs())


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


#: every page's ``<meta name="generator">``, and that of ``neuroplastic view``'s pages
GENERATOR = "neuroplastic"
VIEW_GENERATOR = "neuroplastic view"


def generated_by(path: str | Path, generator: str) -> bool:
    """Whether the HTML file at ``path`` says ``generator`` wrote it (its head, read alone)."""
    with open(path, "rb") as file:
        head = file.read(4096).decode("utf-8", errors="replace")
    return f'<meta name="generator" content="{_html.escape(generator)}">' in head


class HtmlPage:
    """An HTML report built block by block and written as one self-contained file.

    Element ids are ``{id_prefix}-{kind}-{n}``, unique within the page and deterministic, so
    the same content always gives the same bytes.
    """

    def __init__(self, title: str, *, id_prefix: str = "np", generator: str = GENERATOR) -> None:
        """``generator``: the page's ``<meta name="generator">``, which says what wrote it (a
        command refuses to overwrite a file some other thing wrote)."""
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", id_prefix):
            raise ValueError(f"id_prefix must be a CSS identifier, got {id_prefix!r}")
        self.title = title
        self.generator = generator
        self._id_prefix = id_prefix
        self._next_id = 0
        self._stack: list[list[str]] = [[]]
        self._n_plots = 0
        self._n_views = 0

    # -- text ----------------------------------------------------------------------------------

    def heading(self, text: str, level: int = 2) -> None:
        """Add ``<h{level}>`` with escaped text. Level 1 is used by the page title."""
        if not 1 <= level <= 6:
            raise ValueError(f"heading level must be 1..6, got {level}")
        self._add(f"<h{level}>{_html.escape(text)}</h{level}>")

    def paragraph(self, text: str) -> None:
        """Add a paragraph of plain text (escaped)."""
        self._add(f"<p>{_html.escape(text)}</p>")

    def preformatted(self, text: str) -> None:
        """Add plain text in a monospace block, whitespace kept (escaped)."""
        self._add(f"<pre>{_html.escape(text)}</pre>")

    def raw(self, html: str) -> None:
        """Add trusted HTML as is, except that ``<div .../>`` becomes ``<div ...></div>``."""
        self._add(expand_self_closing_divs(html))

    # -- data ----------------------------------------------------------------------------------

    def table(
        self,
        df: pd.DataFrame,
        caption: str | None = None,
        *,
        index: bool = True,
        float_format: str | None = "{:.4g}",
        max_rows: int | None = None,
    ) -> None:
        """Add a DataFrame as a styled table; cells, labels and caption are escaped.

        ``float_format`` is a ``str.format`` pattern for float cells (None: pandas' default).
        """
        formatter = float_format.format if float_format is not None else None
        body = df.to_html(
            border=0,
            classes="np-table",
            escape=True,
            index=index,
            float_format=formatter,
            max_rows=max_rows,
            na_rep="",
        )
        if caption is not None:
            body = re.sub(
                r"(<table\b[^>]*>)",
                lambda m: f"{m.group(1)}\n  <caption>{_html.escape(caption)}</caption>",
                body,
                count=1,
            )
        self._add(f'<div class="np-table-wrap">\n{body}\n</div>')

    def plotly(self, fig: go.Figure, *, height: str = "450px") -> str:
        """Add a Plotly figure; returns its div id.

        plotly.js is inlined once in the page head. ``height`` is the CSS height used when the
        figure's layout sets none.
        """
        if not hasattr(fig, "to_html"):
            raise TypeError(f"expected a plotly Figure, got {type(fig).__name__}")
        div_id = self._new_id("plot")
        body = fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            include_mathjax=False,
            div_id=div_id,
            default_width="100%",
            default_height=height,
            config={"displaylogo": False, "responsive": True},
        )
        self._n_plots += 1
        self._add(f'<div class="np-plot">{body}</div>')
        return div_id

    def circuitsvis(self, component: str, props: Mapping[str, Any]) -> str:
        """Add a CircuitsVis React component with the given props; returns its container id.

        Build ``props`` with the ``*_props`` functions of this module (or pass camelCase props
        as the CircuitsVis React component takes them). ``None`` props are left out, as
        CircuitsVis does.
        """
        if component not in CIRCUITSVIS_COMPONENTS:
            known = ", ".join(sorted(CIRCUITSVIS_COMPONENTS))
            raise ValueError(f"unknown CircuitsVis component {component!r}; known: {known}")
        div_id = self._new_id("cv")
        data = json_for_script({k: v for k, v in props.items() if v is not None})
        self._n_views += 1
        self._add(
            f'<div id="{div_id}" class="np-cv" data-component="{component}"></div>\n'
            f'<script type="application/json" data-circuitsvis="{component}" '
            f'data-target="{div_id}">{data}</script>'
        )
        return div_id

    # -- structure -----------------------------------------------------------------------------

    @contextmanager
    def details(self, summary: str, *, open: bool = False) -> Iterator[None]:
        """Group the blocks added inside the ``with`` into a collapsible ``<details>``."""
        self._stack.append([])
        try:
            yield
        finally:
            inner = self._stack.pop()
            attr = " open" if open else ""
            self._add(
                f"<details{attr}>\n<summary>{_html.escape(summary)}</summary>\n"
                + "\n".join(inner)
                + "\n</details>"
            )

    # -- output --------------------------------------------------------------------------------

    def to_html(self) -> str:
        """The complete document."""
        if len(self._stack) != 1:
            raise RuntimeError("to_html() called inside an open details() block")
        title = _html.escape(self.title)
        head = [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f'<meta name="generator" content="{_html.escape(self.generator)}">',
            f"<title>{title}</title>",
            f"<style>\n{CSS}</style>",
        ]
        if self._n_plots:
            # In the head: each figure's own script calls Plotly.newPlot as soon as it is parsed.
            head.append(f"<script>{_plotly_js()}</script>")
            head.append(f"<script>\n{_PLOTLY_TOGGLE_RESIZE}</script>")
        head.append("</head>")
        body = ["<body>", "<main>", f"<h1>{title}</h1>", *self._stack[0], "</main>"]
        if self._n_views:
            body.append(f"<script>{_circuitsvis_js()}\n</script>")
            body.append(f"<script>\n{_CIRCUITSVIS_BOOTSTRAP}</script>")
        body += ["</body>", "</html>", ""]
        return "\n".join(head + body)

    def to_fragment(self) -> str:
        """The page's title and blocks as one notebook cell output (see the module docstring):
        styles scoped to the fragment, the CircuitsVis bundle with the session's first one,
        and a script that draws the fragment's views. Plotly figures need plotly.js on the
        page: show a page with figures with :meth:`to_iframe` (``_repr_html_`` does)."""
        if len(self._stack) != 1:
            raise RuntimeError("to_fragment() called inside an open details() block")
        if self._n_plots:
            raise ValueError(
                "a page with Plotly figures shows in a notebook as a frame: use to_iframe() or "
                "display the page itself"
            )
        root = f"{self._id_prefix}-root-{uuid.uuid4().hex[:12]}"
        parts = []
        if self._n_views and _bundle_for_this_output():
            parts.append(f"<script>{_notebook_bundle_js()}</script>")
            _notebook_state["bundle_sent"] = True
        parts.append(f'<div class="np-inline" id="{root}">')
        parts.append(f"<style>\n{NOTEBOOK_CSS}</style>")
        if self.title:
            parts.append(f'<div class="np-title">{_html.escape(self.title)}</div>')
        # Until a script runs, a view's box says why it is empty.
        waiting = _html.escape(_VIEW_NEEDS_SCRIPTS)
        parts.append(
            _VIEW_BOX.sub(
                lambda m: f"{m[1]} np-waiting{m[2]}{waiting}{m[3]}", "\n".join(self._stack[0])
            )
        )
        if self._n_views:
            draw = _NOTEBOOK_DRAW.replace("ROOT_ID", json.dumps(root)).replace(
                "WAITING", json.dumps(_VIEW_WAITING)
            )
            parts.append(f"<script>\n{draw}</script>")
        parts.append("</div>")
        return "\n".join(parts)

    def to_iframe(self, height: str = "80vh") -> str:
        """The whole document in an ``<iframe srcdoc>``: a notebook output isolated from the
        notebook's styles and scripts, plotly.js and CircuitsVis inlined as in :meth:`write`."""
        document = _html.escape(self.to_html(), quote=True)
        return (
            f'<iframe class="np-page" title="{_html.escape(self.title, quote=True)}" '
            f'style="width:100%;height:{_html.escape(height, quote=True)};border:1px solid '
            f'rgba(127,127,127,0.35);border-radius:6px" srcdoc="{document}"></iframe>'
        )

    def __repr__(self) -> str:
        return (
            f"HtmlPage({self.title!r}: {self._n_views} CircuitsVis views, {self._n_plots} "
            "figures; display it in a notebook or write() it)"
        )

    def _repr_html_(self) -> str:
        """Jupyter's inline display: a fragment, or a frame when the page has figures."""
        return self.to_iframe() if self._n_plots else self.to_fragment()

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the page atomically (temporary file in the same directory, then rename), with
        the permissions any new file gets; a failed write is one line naming the file."""
        from neuroplastic.io import atomic_write_text

        return atomic_write_text(path, self.to_html())

    # -- internals -----------------------------------------------------------------------------

    def _new_id(self, kind: str) -> str:
        self._next_id += 1
        return f"{self._id_prefix}-{kind}-{self._next_id}"

    def _add(self, html: str) -> None:
        self._stack[-1].append(html)


# --------------------------------------------------------------------------------------------
# CircuitsVis props, as the circuitsvis Python functions build them
# --------------------------------------------------------------------------------------------


def _array(value: Any, name: str, ndim: int | None = None) -> np.ndarray:
    """A numpy view of a numpy array, torch tensor (any device / dtype) or nested list."""
    if hasattr(value, "detach"):
        tensor = value.detach().cpu()
        try:
            arr = tensor.numpy()
        except TypeError:  # bfloat16 and other dtypes numpy lacks
            arr = tensor.float().numpy()
    else:
        arr = np.asarray(value)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    return arr


def _without_none(props: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in props.items() if v is not None}


def _token_html(tokens: Sequence[str], escape: bool) -> list[str]:
    """Tokens as the HTML that CircuitsVis inserts verbatim (see the module docstring)."""
    if isinstance(tokens, str):
        raise TypeError("tokens must be a sequence of strings, not one string")
    return [_html.escape(str(t), quote=False) if escape else str(t) for t in tokens]


def _check_tokens(tokens: Sequence[str], n: int, what: str) -> None:
    if len(tokens) != n:
        raise ValueError(f"{len(tokens)} tokens but {what} has {n} positions")


def text_neuron_activations_props(
    tokens: Sequence[str] | Sequence[Sequence[str]],
    activations: Any,
    first_dimension_name: str | None = "Layer",
    second_dimension_name: str | None = "Neuron",
    first_dimension_labels: Sequence[str] | None = None,
    second_dimension_labels: Sequence[str] | None = None,
    *,
    escape_tokens: bool = True,
) -> dict[str, Any]:
    """Props of ``TextNeuronActivations`` (``circuitsvis.activations.text_neuron_activations``).

    One sample: ``tokens`` a list of strings, ``activations`` an array [tokens, layers, neurons].
    Several samples: a list of token lists and a list of such arrays.
    """
    single = hasattr(activations, "ndim")
    if single:
        arr = _array(activations, "activations", 3)
        _check_tokens(tokens, arr.shape[0], "activations")
        acts: Any = arr.tolist()
    else:
        if len(tokens) != len(activations):
            raise ValueError(f"{len(tokens)} token lists but {len(activations)} activation arrays")
        acts = []
        for sample_tokens, sample in zip(tokens, activations, strict=True):
            arr = _array(sample, "each activations array", 3)
            _check_tokens(sample_tokens, arr.shape[0], "its activations array")
            acts.append(arr.tolist())
    return _without_none(
        {
            "tokens": (
                _token_html(tokens, escape_tokens)  # type: ignore[arg-type]
                if single
                else [_token_html(t, escape_tokens) for t in tokens]
            ),
            "activations": acts,
            "firstDimensionName": first_dimension_name,
            "secondDimensionName": second_dimension_name,
            "firstDimensionLabels": _opt_list(first_dimension_labels),
            "secondDimensionLabels": _opt_list(second_dimension_labels),
        }
    )


def _opt_list(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else list(values)
