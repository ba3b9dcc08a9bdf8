"""CircuitsVis views of what a neuron responds to: its dataset-wide top-k tokens, in context.

Two sources of examples, one view:

* :func:`examples_from_top_k` -- from a run directory (no model at hand). A stage's top-k table
  stores the activation of each top token only, so a sentence shows its top token(s) coloured
  with their activation and every other token at 0 (the page says so).
* :func:`examples_from_model` -- with the model: the top sentences are run through it again
  and every token gets its real activation.

:func:`add_neuron_view` draws one neuron's examples as a CircuitsVis ``TextNeuronActivations``
(one sample per sentence, five to a page, with the top tokens listed above it);
:func:`add_side_by_side` puts views in columns (before / after retraining);
:func:`write_neuron_view_page` is ``neuroplastic view``: any neurons of any model, on a page.

In a notebook, :func:`neuron_view` (any neurons of a model), :func:`side_by_side` and
:func:`ranking_table` return objects that display inline with no network (``_repr_html_``, see
:mod:`neuroplastic.report.html`: the CircuitsVis bundle travels once per notebook session), and so
does a :class:`NeuronExamples`. :func:`show` displays them in a notebook and prints a text
summary in a script.
"""

from __future__ import annotations

import html as _html
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuroplastic.core.activations import neuron_activations
from neuroplastic.core.models import check_mlp_hooks
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.stats import NeuronStats, collect_stats
from neuroplastic.data.concept import ConceptDataset
from neuroplastic.errors import NeuroplasticError
from neuroplastic.report.html import VIEW_GENERATOR, HtmlPage, text_neuron_activations_props

__all__ = [
    "NeuronExamples",
    "NeuronView",
    "RankingTable",
    "add_neuron_view",
    "add_side_by_side",
    "examples_from_model",
    "examples_from_top_k",
    "neuron_view",
    "ranking_table",
    "show",
    "side_by_side",
    "write_neuron_view_page",
]

_COLUMNS_STYLE = (
    "display:grid;grid-template-columns:repeat({n},minmax(0,1fr));gap:1rem;align-items:start"
)


@dataclass
class NeuronExamples:
    """A neuron's top-activating sentences, ready to draw."""

    layer: int
    neuron: int
    title: str
    #: token strings of each example sentence
    tokens: list[list[str]]
    #: the neuron's activation on every token of each sentence
    activations: list[np.ndarray]
    #: the top-k table rows of this neuron: k, value, sentence, position, token, label
    top: pd.DataFrame
    #: False when every top activation is exactly zero (an ablated neuron)
    alive: bool = True
    #: True when activations cover every token; False when only the top tokens are known
    full: bool = False
    #: top-k entries whose sentence or position was not found in the sentences given
    skipped: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"L{self.layer}:N{self.neuron}"

    def _repr_html_(self) -> str:
        return NeuronView([self])._repr_html_()

    def __str__(self) -> str:
        return str(NeuronView([self]))


def examples_from_top_k(
    top_tokens: pd.DataFrame,
    sentences: Sequence[Sequence[str]],
    layer: int,
    neuron: int,
    max_sentences: int = 5,
    title: str = "",
    activations: Mapping[tuple[int, int, int], np.ndarray] | None = None,
) -> NeuronExamples:
    """Examples from a stage's top-k table (``top_tokens.parquet``) and ``sentences.json``.

    Each example sentence holds one or more of the neuron's top tokens. Where ``activations``
    (the run's stored ``(layer, neuron, sentence) -> every token``,
    :meth:`~neuroplastic.store.rundir.RunDir.sentence_activations`) has the sentence, every
    token carries its activation; otherwise the top tokens carry their stored activation and
    every other token 0. Sentences are ordered by their best top value.
    """
    rows = top_tokens[(top_tokens["layer"] == layer) & (top_tokens["neuron"] == neuron)]
    rows = rows.sort_values("k", kind="stable")
    if rows.empty:
        raise NeuroplasticError(f"no top-k entries for neuron {layer}:{neuron}")
    alive = bool((rows["value"].abs() > 0).any())
    tokens: list[list[str]] = []
    skipped = 0
    by_sentence: dict[int, list[tuple[int, float]]] = {}
    for sentence, position, value in rows[["sentence", "position", "value"]].itertuples(
        index=False
    ):
        sentence, position = int(sentence), int(position)
        if not (0 <= sentence < len(sentences) and 0 <= position < len(sentences[sentence])):
            skipped += 1
            continue
        by_sentence.setdefault(sentence, []).append((position, float(value)))
    stored = activations or {}
    values_of: list[np.ndarray] = []
    whole = 0
    for sentence, entries in list(by_sentence.items())[:max_sentences]:
        full_sentence = stored.get((layer, neuron, sentence))
        if full_sentence is not None and len(full_sentence) == len(sentences[sentence]):
            values = np.asarray(full_sentence, dtype=np.float32)
            whole += 1
        else:
            values = np.zeros(len(sentences[sentence]), dtype=np.float32)
            for position, value in entries:
                values[position] = value
        tokens.append(list(sentences[sentence]))
        values_of.append(values)
    top = rows[
        [c for c in ("k", "value", "sentence", "position", "token", "label") if c in rows.columns]
    ].reset_index(drop=True)
    notes = []
    if skipped:
        notes.append(f"{skipped} top-k entries point outside the stored sentences")
    return NeuronExamples(
        layer,
        neuron,
        title or f"L{layer}:N{neuron}",
        tokens,
        values_of,
        top,
        alive=alive,
        full=bool(values_of) and whole == len(values_of),
        skipped=skipped,
        notes=notes,
    )


def examples_from_model(
    model: Any,
    dataset: ConceptDataset,
    neurons: NeuronSet,
    stats: NeuronStats,
    max_sentences: int = 5,
    batch_size: int = 16,
    progress: bool = False,
) -> list[NeuronExamples]:
    """Examples with every token's real activation: the neurons' top sentences (from ``stats``,
    collected on ``dataset``) are run through ``model`` again with MLP hooks."""
    return _model_examples(model, dataset, neurons, stats, max_sentences, batch_size, progress)[0]


def _model_examples(
    model: Any,
    dataset: ConceptDataset,
    neurons: NeuronSet,
    stats: NeuronStats,
    max_sentences: int,
    batch_size: int,
    progress: bool,
) -> tuple[list[NeuronExamples], dict[int, np.ndarray]]:
    """The examples, and every chosen neuron's activations on every sentence of any of them."""
    n_layers, d_mlp = check_mlp_hooks(model)
    if (neurons.n_layers, neurons.d_mlp) != (n_layers, d_mlp):
        raise NeuroplasticError(
            f"the neurons are for a {neurons.n_layers} x {neurons.d_mlp} model, but the model has "
            f"{n_layers} layers x {d_mlp} neurons"
        )
    if (stats.n_layers, stats.d_mlp) != (n_layers, d_mlp):
        raise NeuroplasticError("the statistics were taken on a model of another shape")
    chosen = list(neurons.neurons)
    per_neuron: list[list[int]] = []
    for layer, neuron in chosen:
        order = list(dict.fromkeys(int(s) for s in stats.top_sentence[layer, neuron]))
        per_neuron.append(order[:max_sentences])
    union = list(dict.fromkeys(s for sentences in per_neuron for s in sentences))
    activations = neuron_activations(model, dataset, chosen, union, batch_size, progress)
    vocabulary: dict[int, str] = {}
    examples = []
    for column, ((layer, neuron), sentences) in enumerate(zip(chosen, per_neuron, strict=True)):
        ids = stats.top_token[layer, neuron].tolist()
        for token in ids:
            if token not in vocabulary:
                vocabulary[token] = dataset.tokenizer.decode([token])
        top = pd.DataFrame(
            {
                "k": range(len(ids)),
                "value": stats.top_values[layer, neuron].numpy(),
                "sentence": stats.top_sentence[layer, neuron].numpy(),
                "position": stats.top_position[layer, neuron].numpy(),
                "token": [vocabulary[t] for t in ids],
                "label": [stats.label_names[int(i)] for i in stats.top_label[layer, neuron]],
            }
        )
        examples.append(
            NeuronExamples(
                layer,
                neuron,
                f"L{layer}:N{neuron}",
                [dataset.token_strings(s) for s in sentences],
                [activations[s][:, column] for s in sentences],
                top,
                alive=bool((stats.top_values[layer, neuron].abs() > 0).any()),
                full=True,
            )
        )
    return examples, activations


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------


def _top_summary(examples: NeuronExamples, n: int = 10) -> str:
    """ "Paris (LOC 2.31) · London (LOC 2.02) ..." as escaped HTML."""
    parts = []
    for row in examples.top.head(n).itertuples(index=False):
        token = _html.escape(str(getattr(row, "token", "?")).strip() or repr(row.token))
        label = _html.escape(str(getattr(row, "label", "")))
        parts.append(f"<b>{token}</b> <small>({label} {row.value:.3g})</small>")
    return " · ".join(parts)


def readable_tokens(tokens: Sequence[str]) -> list[str]:
    """Tokens as a reader reads them, one span each: WordPiece pieces (BERT) get a space before
    every token that starts a word and lose the ``##`` of those that continue one; tokens that
    already carry their spaces (byte-level BPE, GPT-2) are left as they are."""
    tokens = list(tokens)
    if any(t[:1].isspace() for t in tokens[1:]):
        return tokens
    return [
        t[2:] if t.startswith("##") else (t if i == 0 else f" {t}") for i, t in enumerate(tokens)
    ]


def add_neuron_view(
    page: HtmlPage, examples: NeuronExamples, heading: str | None = None
) -> str | None:
    """Draw one neuron's examples; returns the CircuitsVis container id (None if nothing to
    draw: a dead neuron or no sentence found)."""
    title = _html.escape(heading if heading is not None else examples.title)
    page.raw(f'<div class="np-neuron"><div><b>{title}</b></div>')
    page.raw(f'<div style="font-size:0.85rem">top tokens: {_top_summary(examples)}</div>')
    view_id = None
    if not examples.alive:
        page.raw("<p><i>Dead at this stage: every top activation is 0 (ablated neuron).</i></p>")
    elif not examples.tokens:
        page.raw("<p><i>None of the top tokens' sentences are stored.</i></p>")
    else:
        if not examples.full:
            page.raw(
                '<div style="font-size:0.8rem;color:#57606a">Only the top tokens\' '
                "activations are stored; other tokens show 0.</div>"
            )
        _note_clipped(page, examples.activations)
        view_id = page.circuitsvis(
            "TextNeuronActivations",
            text_neuron_activations_props(
                [readable_tokens(sentence) for sentence in examples.tokens],
                [a.reshape(-1, 1, 1) for a in _clipped(examples.activations)],
                first_dimension_name="Layer",
                second_dimension_name="Neuron",
                first_dimension_labels=[str(examples.layer)],
                second_dimension_labels=[str(examples.neuron)],
            ),
        )
    for note in examples.notes:
        page.raw(f'<div style="font-size:0.8rem;color:#b42318">{_html.escape(note)}</div>')
    page.raw("</div>")
    return view_id


def _clipped(activations: Sequence[np.ndarray]) -> list[np.ndarray]:
    """What a view colours: the activations with their negative side at 0. CircuitsVis scales
    negative values to their own minimum, so GELU's floor (never below -0.17) would show as
    bright as the peak; clipped, colour follows the positive magnitude (the value over the
    view's largest)."""
    return [np.maximum(a, 0.0) for a in activations]


def _note_clipped(page: HtmlPage, activations: Sequence[np.ndarray]) -> None:
    lowest = min((float(a.min()) for a in activations if a.size), default=0.0)
    if lowest < 0:
        page.raw(
            '<div style="font-size:0.8rem;color:#57606a">Colour follows the activation over the '
            f"view's largest; negative activations (here down to {lowest:.3g}) show as 0.</div>"
        )


def add_side_by_side(
    page: HtmlPage, columns: Sequence[NeuronExamples], headings: Sequence[str] | None = None
) -> list[str | None]:
    """Views in columns (e.g. the same neuron before and after retraining)."""
    headings = list(headings) if headings is not None else [c.title for c in columns]
    page.raw(f'<div class="np-columns" style="{_COLUMNS_STYLE.format(n=len(columns))}">')
    ids = []
    for examples, heading in zip(columns, headings, strict=True):
        page.raw('<div style="min-width:0">')
        ids.append(add_neuron_view(page, examples, heading))
        page.raw("</div>")
    page.raw("</div>")
    return ids


def write_neuron_view_page(
    model: Any,
    dataset: ConceptDataset,
    neurons: NeuronSet,
    out: str | Path,
    top_k: int = 10,
    stats: NeuronStats | None = None,
    max_sentences: int = 5,
    batch_size: int = 32,
    progress: bool = False,
    title: str | None = None,
) -> Path:
    """``neuroplastic view``: :func:`neuron_view` written as one offline HTML page."""
    view = neuron_view(
        model, dataset, neurons, top_k, stats, max_sentences, batch_size, progress, title
    )
    return view.save(out)


def _neuron_table(examples: Sequence[NeuronExamples]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "neuron": [e.label for e in examples],
            "max activation": [
                float(e.top["value"].max()) if len(e.top) else float("nan") for e in examples
            ],
            "top tokens": [
                ", ".join(str(t).strip() for t in e.top["token"].head(8)) for e in examples
            ],
            "labels": [
                ", ".join(f"{k} {v}" for k, v in e.top["label"].value_counts().items())
                for e in examples
            ],
        }
    )


# ---------------------------------------------------------------------------------------------
# Inline in a notebook
# ---------------------------------------------------------------------------------------------


@dataclass
class _Overview:
    """Every chosen neuron over every top sentence of any of them: one view with a menu."""

    tokens: list[list[str]]
    #: per sentence, [pos, 1, neuron]
    activations: list[np.ndarray]
    labels: list[str]


class NeuronView:
    """Neurons' examples to look at: inline in a notebook (``_repr_html_``, offline) or as a
    page (:meth:`save`). Make one with :func:`neuron_view` or :func:`side_by_side`."""

    def __init__(
        self,
        examples: Sequence[NeuronExamples],
        *,
        columns: bool = False,
        headings: Sequence[str] | None = None,
        title: str = "",
        description: str | None = None,
        overview: _Overview | None = None,
    ) -> None:
        self.examples = list(examples)
        if not self.examples:
            raise NeuroplasticError("no neurons to view")
        self.headings = list(headings) if headings is not None else [e.title for e in examples]
        if len(self.headings) != len(self.examples):
            raise NeuroplasticError(
                f"{len(self.headings)} headings for {len(self.examples)} neurons; give one each"
            )
        self.columns, self.title = columns, title
        self.description, self.overview = description, overview

    @property
    def neurons(self) -> list[tuple[int, int]]:
        """``(layer, neuron)`` of each view, in order."""
        return [(e.layer, e.neuron) for e in self.examples]

    def add_to(self, page: HtmlPage, level: int = 2) -> list[str | None]:
        """Add the views to ``page`` (headings at ``level``); returns their container ids."""
        if self.description:
            page.paragraph(self.description)
        if self.overview is not None:
            page.table(_neuron_table(self.examples), caption="Neurons", index=False)
            page.heading("All neurons", level)
            _note_clipped(page, self.overview.activations)
            page.circuitsvis(
                "TextNeuronActivations",
                text_neuron_activations_props(
                    [readable_tokens(sentence) for sentence in self.overview.tokens],
                    _clipped(self.overview.activations),
                    first_dimension_name="Hook",
                    second_dimension_name="Neuron",
                    first_dimension_labels=["mlp.hook_post"],
                    second_dimension_labels=self.overview.labels,
                ),
            )
            page.heading("Each neuron", level)
        if self.columns:
            return add_side_by_side(page, self.examples, self.headings)
        return [
            add_neuron_view(page, e, h) for e, h in zip(self.examples, self.headings, strict=True)
        ]

    def page(self) -> HtmlPage:
        """A standalone page of the views."""
        page = HtmlPage(
            self.title or f"Neuron views: {', '.join(self._labels())}", generator=VIEW_GENERATOR
        )
        self.add_to(page)
        return page

    def save(self, path: str | Path) -> Path:
        """Write the views as one offline HTML page; returns its path."""
        return self.page().write(path)

    def _repr_html_(self) -> str:
        page = HtmlPage(self.title, id_prefix=_fresh_prefix())
        self.add_to(page, level=4)
        return page.to_fragment()

    def _labels(self) -> list[str]:
        return [e.label for e in self.examples]

    def __repr__(self) -> str:
        layout = ", side by side" if self.columns else ""
        return f"NeuronView({len(self.examples)} neurons: {', '.join(self._labels())}{layout})"

    def __str__(self) -> str:
        """What a script prints: each neuron's top tokens with their labels and activations."""
        lines = [self.title] if self.title else []
        for examples, heading in zip(self.examples, self.headings, strict=True):
            tops = ", ".join(
                f"{str(row.token).strip() or repr(row.token)} ({row.label} {row.value:.3g})"
                for row in examples.top.head(8).itertuples(index=False)
            )
            state = "" if examples.alive else " [dead: every top activation is 0]"
            lines.append(f"{heading}{state}: {tops}")
        return "\n".join(lines)


def neuron_view(
    model: Any,
    dataset: ConceptDataset,
    neurons: NeuronSet,
    top_k: int = 10,
    stats: NeuronStats | None = None,
    max_sentences: int = 5,
    batch_size: int = 32,
    progress: bool = False,
    title: str | None = None,
) -> NeuronView:
    """Each neuron's dataset-wide top-k tokens and their sentences, with every token's
    activation: all the neurons over all their top sentences in one view (pick a neuron from
    its menu), then one view per neuron. Displays inline in a notebook; ``.save(path)`` writes
    a page.

    Collects statistics over ``dataset`` first unless ``stats`` (taken on this dataset) is given.
    """
    if len(neurons) == 0:
        raise NeuroplasticError("no neurons to view")
    if stats is None:
        stats = collect_stats(model, dataset, batch_size=batch_size, top_k=top_k, progress=progress)
    examples, activations = _model_examples(
        model, dataset, neurons, stats, max_sentences, batch_size, progress
    )
    sentences = list(activations)
    overview = _Overview(
        [dataset.token_strings(s) for s in sentences],
        [activations[s][:, None, :] for s in sentences],
        [e.label for e in examples],
    )
    name = getattr(model.cfg, "model_name", type(model).__name__)
    return NeuronView(
        examples,
        title=title or f"Neuron views: {len(neurons)} neuron(s) of {name}",
        description=(
            f"Dataset-wide top-{stats.k} activating tokens of each neuron (blocks.L.mlp.hook_post) "
            f"over {len(dataset)} sentences, and the activation of every token of its top "
            f"{max_sentences} sentences."
        ),
        overview=overview,
    )


def side_by_side(
    columns: Sequence[NeuronExamples], headings: Sequence[str] | None = None, title: str = ""
) -> NeuronView:
    """Neurons' views in columns (one neuron before and after retraining, or neurons to
    compare); displays inline in a notebook."""
    return NeuronView(columns, columns=True, headings=headings, title=title)


class RankingTable:
    """The most salient neurons of a ranking as a table: ``frame`` (a DataFrame), inline in a
    notebook, or text in a script. Make one with :func:`ranking_table`."""

    def __init__(self, frame: pd.DataFrame, title: str) -> None:
        self.frame, self.title = frame, title

    def _repr_html_(self) -> str:
        page = HtmlPage(self.title, id_prefix=_fresh_prefix())
        page.table(self.frame, index=False)
        return page.to_fragment()

    def __repr__(self) -> str:
        return f"RankingTable({len(self.frame)} neurons: {self.title})"

    def __str__(self) -> str:
        return f"{self.title}\n{self.frame.to_string(index=False)}"


def ranking_table(
    ranking: Ranking,
    stats: NeuronStats | None = None,
    tokenizer: Any = None,
    n: int = 20,
    title: str | None = None,
) -> RankingTable:
    """The ``n`` most salient live neurons: rank (1 = most salient), layer, neuron, score and
    saliency, and with ``stats`` and ``tokenizer`` their top tokens with their labels."""
    if n <= 0:
        raise NeuroplasticError(f"n must be positive; got {n}")
    if stats is not None and (stats.n_layers, stats.d_mlp) != (ranking.n_layers, ranking.d_mlp):
        raise NeuroplasticError("the statistics were taken on a model of another shape")
    frame = ranking.to_frame()
    frame = frame[frame["rank"].notna()].head(n).reset_index(drop=True)
    table = pd.DataFrame(
        {
            "#": frame["rank"] + 1,
            "layer": frame["layer"],
            "neuron": frame["neuron"],
            "score": frame["score"],
            "saliency": frame["saliency"],
        }
    )
    if stats is not None and tokenizer is not None:
        decoded: dict[int, str] = {}

        def word(token: int) -> str:
            if token not in decoded:
                decoded[token] = tokenizer.decode([token]).strip()
            return decoded[token]

        table["top tokens"] = [
            ", ".join(
                f"{word(t)} ({stats.label_names[z]})"
                for t, z in zip(
                    stats.top_token[layer, neuron][:6].tolist(),
                    stats.top_label[layer, neuron][:6].tolist(),
                    strict=True,
                )
            )
            for layer, neuron in zip(frame["layer"], frame["neuron"], strict=True)
        ]
    return RankingTable(
        table,
        title or f"Top {len(table)} neurons for {ranking.concept} ({ranking.method})",
    )


def show(*objects: Any) -> None:
    """Display ``objects`` inline in a notebook (IPython kernel); in a script or terminal, print
    them as text. A Plotly figure prints one line instead of opening a browser; in a notebook it
    displays as :class:`InlineFigure` (drawn offline by every frontend)."""
    shell = _kernel_shell()
    for obj in objects:
        if shell is not None:
            from IPython.display import display

            display(InlineFigure(obj) if hasattr(obj, "to_plotly_json") else obj)
        elif hasattr(obj, "to_plotly_json"):
            title = obj.layout.title.text if obj.layout.title.text else "untitled"
            print(f"[figure: {title}; open this as a notebook to see it]")
        else:
            print(obj)


class InlineFigure:
    """A Plotly figure as a notebook output every frontend draws offline: Plotly's own mimetype
    (JupyterLab with its Plotly extension, VS Code) and, for frontends without it (nbconvert's
    HTML export, a notebook without the extension, where a bare figure shows nothing), the
    figure in an isolated frame with plotly.js inlined, as in a report."""

    def __init__(self, figure: Any, height: str = "480px") -> None:
        self.figure, self.height = figure, height

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        import plotly.io as pio

        title = self.figure.layout.title.text or "figure"
        page = HtmlPage(title)
        page.plotly(self.figure, height=self.height)
        bundle = pio.renderers["plotly_mimetype"].to_mimebundle(self.figure.to_dict())
        frame = page.to_iframe(height=f"calc({self.height} + 40px)")
        return {**bundle, "text/html": frame, "text/plain": f"<figure: {title}>"}


def _kernel_shell() -> Any:
    """The IPython shell when running in a notebook kernel, else None (scripts, terminals)."""
    if "IPython" not in sys.modules:
        return None
    shell = sys.modules["IPython"].get_ipython()
    return shell if shell is not None and getattr(shell, "kernel", None) is not None else None


def _fresh_prefix() -> str:
    """Element ids unique across a notebook's outputs, which share one page."""
    return f"np{uuid.uuid4().hex[:10]}"
