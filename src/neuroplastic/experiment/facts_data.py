"""The facts study's data, one seed: which facts the base model knows, how they split into
forget-T, forget-V, retain and held out (by hashes salted with the seed), the questions asked
of every state, and the sentences ranked on and retrained on (:class:`StudyData`). Nothing
here depends on the removal: a grid's cells that differ only in it share each seed's split.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from neuroplastic.core.fact_scores import ask
from neuroplastic.data.concept import ConceptDataset
from neuroplastic.data.facts import (
    FACT_LABELS,
    FORGET,
    RETAIN,
    TRAIN_TEMPLATES,
    Fact,
    MultipleChoice,
    _unit_hash,
    generate_facts,
    multiple_choices,
    recall_dataset,
    render_facts,
    split_facts,
)
from neuroplastic.data.load import concept_labels
from neuroplastic.data.synthetic import generate_corpus
from neuroplastic.data.types import NerCorpus
from neuroplastic.errors import NeuroplasticError
from neuroplastic.facts_config import FactsConfig
from neuroplastic.io import atomic_write_json
from neuroplastic.progress import report_line

TAG_NAMES = ("O", *(f"{p}-{label}" for label in (FORGET, RETAIN) for p in ("B", "I")))
#: The embedded corpus sentences searched for text with no location in it.
CORPUS_SENTENCES = 2000


def known_facts_of(
    model: Any, config: FactsConfig, root: Path, facts: Sequence[Fact] | None = None
) -> tuple[list[Fact], dict]:
    """The facts the base model answers right by multiple choice, and every fact's question;
    found once per study directory (``known.json``) and read back after. ``facts``: the pool
    (default: :func:`generate_facts` with ``config.n_cities``)."""
    facts = generate_facts(n_cities=config.n_cities) if facts is None else tuple(facts)
    questions = {q.fact.key: q for q in multiple_choices(facts, seed=0)}
    path = root / "known.json"
    identity = {"model": config.model, "n_cities": config.n_cities, "facts": len(facts)}
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded["identity"] != identity:
            raise NeuroplasticError(
                f"{path} holds the known facts of {recorded['identity']}, not {identity}: use "
                "another --out directory for another model or fact pool"
            )
        known_keys = set(recorded["known"])
    else:
        report_line(f"asking the base model all {len(facts)} facts (once per study)")
        results = ask(model, list(questions.values()), greedy=False)
        known_keys = {r.fact.key for r in results if r.multiple_choice}
        atomic_write_json(
            path,
            {
                "identity": identity,
                "known": [f.key for f in facts if f.key in known_keys],
                "asked": len(facts),
            },
        )
    return [f for f in facts if f.key in known_keys], questions


def _capped(facts: Sequence[Fact], cap: int) -> list[Fact]:
    """The first ``cap`` facts of each relation (all when ``cap`` is 0), in order."""
    if not cap:
        return list(facts)
    kept: dict[str, int] = {}
    out = []
    for fact in facts:
        if kept.get(fact.relation, 0) < cap:
            kept[fact.relation] = kept.get(fact.relation, 0) + 1
            out.append(fact)
    return out


def _held_out(facts: Sequence[Fact], config: FactsConfig) -> list[Fact]:
    """The ``config.held_out`` share of the forget relation's facts (rounded up, so that a half
    holds at least as many as T and V together), chosen by a hash salted with the seed, kept
    in their order."""
    forget = [f for f in facts if f.relation == config.forget_relation]
    n = math.ceil(config.held_out * len(forget))
    return _by_hash(forget, f"held-out:{config.seed}", n)


def _by_hash(facts: Sequence[Fact], salt: str, n: int) -> list[Fact]:
    """``n`` of ``facts`` chosen by a salted stable hash, kept in their order."""
    chosen = set(sorted(facts, key=lambda f: _unit_hash(f"{salt}:{f.key}"))[:n])
    return [f for f in facts if f in chosen]


@functools.lru_cache(maxsize=1)
def unrelated_text() -> NerCorpus:
    """Embedded-corpus sentences that mention no location (so no country and no capital), as
    the train split of a corpus: text with no fact of either relation in it. The same for
    every seed, so generated once per process (callers copy the list before cutting it)."""
    corpus = generate_corpus(n_train=CORPUS_SENTENCES, n_validation=0, seed=0)
    plain = [s for s in corpus.train if "LOC" not in s.entity_labels]
    return replace(corpus, train=plain)


def facts_dataset(sentences: Sequence[Any], model: Any, config: FactsConfig) -> ConceptDataset:
    """Rendered fact sentences in the study's encoding: the model's tokenizer, the facts'
    labels (the answer tagged forget or retain) and ``config.max_length``."""
    return ConceptDataset(sentences, model.tokenizer, FACT_LABELS, TAG_NAMES, config.max_length)


class StudyData:
    """Everything one seed asks, ranks on and retrains on."""

    def __init__(
        self, model: Any, config: FactsConfig, root: Path, facts: Sequence[Fact] | None = None
    ) -> None:
        known, questions = known_facts_of(model, config, root, facts)
        known = _capped(known, config.max_facts)
        #: Known facts of the forget relation set aside from T and V (``held_out``): never
        #: ranked on, removed or retrained on by the removal; a weight edit's control
        #: unlearns as many of them as T and V hold.
        self.held_out = _held_out(known, config)
        held = set(self.held_out)
        split = split_facts(
            [f for f in known if f not in held],
            config.forget_relation,
            seed=config.seed,
        )
        if min(len(split.forget_t), len(split.forget_v), len(split.retain)) < 2:
            raise NeuroplasticError(
                f"the base model knows too few facts to split: T {len(split.forget_t)}, V "
                f"{len(split.forget_v)}, retain {len(split.retain)}; raise --max-facts or use "
                "a model that knows more"
            )
        self.split = split
        retain_asked = _by_hash(
            split.retain, f"retain-asked:{config.seed}", config.retain_questions
        )
        self.questions: dict[str, list[MultipleChoice]] = {
            "forget_v": [questions[f.key] for f in split.forget_v],
            "forget_t": [questions[f.key] for f in split.forget_t],
            "retain": [questions[f.key] for f in retain_asked],
        }
        asked = set(retain_asked)
        #: The retain facts a weight edit keeps (``edit_retain``): by default none that is
        #: asked, so that the retain accuracy after the edit is out of its sample.
        self.edit_retain = [
            f for f in split.retain if config.edit_retain == "all" or f not in asked
        ]
        if self.held_out:
            self.questions["held_out"] = [questions[f.key] for f in self.held_out]
        forget = [*split.forget_t, *split.forget_v]
        rendered = [
            *render_facts(forget, TRAIN_TEMPLATES, FORGET),
            *render_facts(split.retain, TRAIN_TEMPLATES, RETAIN),
        ]
        self.recall = recall_dataset(
            facts_dataset([r.sentence for r in rendered], model, config), rendered
        )
        self.train: dict[str, ConceptDataset] = {
            "heldout": facts_dataset(
                [r.sentence for r in render_facts(split.forget_t, TRAIN_TEMPLATES, FORGET)],
                model,
                config,
            ),
            "retain": facts_dataset(
                [r.sentence for r in render_facts(split.retain, TRAIN_TEMPLATES, RETAIN)],
                model,
                config,
            ),
            "same": facts_dataset(
                [r.sentence for r in render_facts(forget, TRAIN_TEMPLATES, FORGET)],
                model,
                config,
            ),
        }
        # The general-ability sentences come first and are never retrained on.
        text = unrelated_text()
        plain = list(text.train)
        general, rest = plain[: config.general_sentences], plain[config.general_sentences :]
        if config.unrelated_sentences:
            rest = sorted(
                rest, key=lambda s: _unit_hash(f"unrelated:{config.seed}:{' '.join(s.words)}")
            )[: config.unrelated_sentences]
        labels, tags = concept_labels(text), text.tag_names
        self.general = ConceptDataset(general, model.tokenizer, labels, tags, config.max_length)
        self.train["unrelated"] = ConceptDataset(
            rest, model.tokenizer, labels, tags, config.max_length
        )

    def control_forget(self, model: Any, config: FactsConfig) -> tuple[list[Fact], ConceptDataset]:
        """As many held-out facts as forget-T and V hold (a seeded hash chooses them), rendered
        as the forget facts are: what a weight edit's control unlearns."""
        n = len(self.split.forget_t) + len(self.split.forget_v)
        if len(self.held_out) < n:
            raise NeuroplasticError(
                f"a weight edit's control unlearns as many held-out facts as T and V hold "
                f"({n}), and {len(self.held_out)} are held out; give --held-out 0.5"
            )
        chosen = _by_hash(self.held_out, f"control-forget:{config.seed}", n)
        rendered = render_facts(chosen, TRAIN_TEMPLATES, FORGET)
        return chosen, facts_dataset([r.sentence for r in rendered], model, config)

    def sizes(self) -> dict[str, int]:
        return {
            "forget_t": len(self.split.forget_t),
            "forget_v": len(self.split.forget_v),
            "retain": len(self.split.retain),
            "held_out": len(self.held_out),
            "retain_asked": len(self.questions["retain"]),
            "recall_sentences": len(self.recall),
            **{f"train_{name}": len(data) for name, data in self.train.items()},
            "general_sentences": len(self.general),
        }
