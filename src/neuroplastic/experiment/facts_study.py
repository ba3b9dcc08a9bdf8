"""The facts study, one seed: does removed knowledge stay removed?

Deeb & Roger (2024, RTT) made the question precise: remove a set of facts, fine-tune on some of
them (forget-T) and test the others (forget-V). Facts that were truly removed cannot come back
from training on *other* facts; facts that were only hidden do. Łucki et al. (2024) showed that
training on *unrelated* text can bring hidden knowledge back too. Here, on a pretrained decoder:

    known facts ──► split T / V / retain (salted by the seed) ──► statistics at the recall
    positions of the forget and retain facts ──► ranking ──► the removal (top neurons, held)
    and its control (as many random neurons per layer, held)
      ──► for each protocol (heldout, unrelated, retain) and arm (removal, control, none):
          base weights ──► the arm's neurons held ──► retrain ``steps`` steps ──► ask V

Every arm of a protocol starts from the base weights and retrains on the same batches in the
same order with the same schedule: they differ in the neurons held and nothing else. The
``none`` arm (no removal) says what the retraining teaches V by itself, which the recovery
measure subtracts (:mod:`neuroplastic.analysis.facts_measures`).

The questions are drawn once from the whole fact pool (multiple choice among four answers of
the relation, RTT's measure, greedy exact match beside it) and asked of every model state with
an evaluation template that no training sentence uses. Known facts are those the base model
answers right by multiple choice; the seed does not change them, so they are found once per
study directory (``known.json``).

The removal is one of three kinds, each beside its control: neurons held at zero (control: as
many random neurons per layer), an eraser held at every layer (control: random directions
removing as much variance), or a weight edit, gradient difference or RMU on the forget facts
against the retain facts (control: the same method on as many held-out facts of the relation,
``held_out``; :mod:`neuroplastic.core.unlearning`). The retrainer fine-tunes every weight, or
LoRA adapters with the removal still held.

Files of one seed (``seed-S/``): ``config.json``, ``neurons-removal.json`` and
``neurons-control.json``, ``erasure-*.safetensors``, or ``edit-*.safetensors`` with
``edits.json`` (exactly what is held or edited, so a resumed run holds the same removal),
``scores.jsonl`` (one line per model state, written as soon as it is measured),
``summary.json``, and for a neuron removal ``gainers-<protocol>.json`` (the surviving neurons
that gained most saliency for the forget facts while each held arm relearned:
:mod:`neuroplastic.experiment.facts_gainers`). A rerun of the same command skips every
state already in ``scores.jsonl``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from neuroplastic.analysis.facts_measures import aggregate, seed_measures
from neuroplastic.core.ablation import ablate
from neuroplastic.core.adapters import lora_adapters
from neuroplastic.core.erasure import (
    LinearErasure,
    erase,
    fit_direction,
    fit_leace,
    fit_matched_control,
)
from neuroplastic.core.fact_lens import lens_accuracies
from neuroplastic.core.fact_scores import accuracies, ask
from neuroplastic.core.fitted_lens import final_residuals, fitted_lens_accuracies
from neuroplastic.core.models import load_model, model_device
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.training import TrainConfig, lm_loss, lm_token_losses, train
from neuroplastic.core.unlearning import (
    changed_tensors,
    gradient_difference,
    mean_residual_norm,
    rmu,
)
from neuroplastic.data.concept import Batch, ConceptDataset
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
from neuroplastic.experiment.facts_gainers import HELD_ARMS, Gainers, recall_ranking
from neuroplastic.experiment.facts_grid_plan import COMPARISON_FILE
from neuroplastic.facts_config import ARMS, BEFORE_THE_SETTING, WEIGHT_EDITS, FactsConfig
from neuroplastic.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from neuroplastic.progress import report_line

TAG_NAMES = ("O", *(f"{p}-{label}" for label in (FORGET, RETAIN) for p in ("B", "I")))
#: The embedded corpus sentences searched for text with no location in it.
CORPUS_SENTENCES = 2000


# --------------------------------------------------------------------------------------------
# Data


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


def _dataset(sentences: Sequence[Any], model: Any, config: FactsConfig) -> ConceptDataset:
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
            _dataset([r.sentence for r in rendered], model, config), rendered
        )
        self.train: dict[str, ConceptDataset] = {
            "heldout": _dataset(
                [r.sentence for r in render_facts(split.forget_t, TRAIN_TEMPLATES, FORGET)],
                model,
                config,
            ),
            "retain": _dataset(
                [r.sentence for r in render_facts(split.retain, TRAIN_TEMPLATES, RETAIN)],
                model,
                config,
            ),
            "same": _dataset(
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
        return chosen, _dataset([r.sentence for r in rendered], model, config)

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


# --------------------------------------------------------------------------------------------
# Losses and measures


def answer_loss(model: Any, batch: Batch) -> Tensor:
    """Next-token loss on the answer's tokens only: the fact is what is taught, not its
    phrasing (every token of a rendered fact is ``O`` but the answer's)."""
    losses: Float[Tensor, "batch pos_minus_1"] = lm_token_losses(model, batch)
    answer = (batch.concept_labels[:, 1:] > 0) & batch.attention_mask[:, 1:].bool()
    return (losses * answer).sum() / answer.sum().clamp(min=1)


def general_loss(model: Any, data: ConceptDataset, batch_size: int = 32) -> float:
    """The mean next-token loss over every real token of ``data`` (token-weighted)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in data.batches(batch_size, data.by_length()):
            batch = batch.to(model_device(model))
            mask = batch.attention_mask[:, 1:].float()
            total += float((lm_token_losses(model, batch) * mask).sum())
            count += int(mask.sum())
    return total / count


#: The lenses a state is read through, by their part in its scores: the logit lens
#: (:mod:`neuroplastic.core.fact_lens`) and the fitted lens (:mod:`neuroplastic.core.fitted_lens`).
LENSES = ("forget_v_lens", "forget_v_fitted")


def measure(
    model: Any,
    data: StudyData,
    parts: Sequence[str],
    lens_targets: Float[Tensor, "tokens d_model"] | None = None,
) -> dict[str, Any]:
    """The model's accuracy on each part's questions (multiple choice and greedy); with
    ``"general"`` among ``parts``, its general-ability loss; with ``"forget_v_lens"``, V's
    multiple choice read at every layer through the logit lens
    (:mod:`neuroplastic.core.fact_lens`); with ``"forget_v_fitted"``, through the fitted lens,
    its maps fitted on this model and the general-ability sentences to predict
    ``lens_targets`` (base's last layer there: :func:`neuroplastic.core.fitted_lens.fit_lens`).
    """
    out: dict[str, Any] = {}
    for part in parts:
        if part == "general":
            out["general_loss"] = general_loss(model, data.general)
        elif part in LENSES:
            # A model without TransformerLens's hook points (a planted toy) has no residual
            # stream to read: no lens for it.
            if not hasattr(model, "run_with_cache"):
                continue
            questions = data.questions["forget_v"]
            out[part] = (
                lens_accuracies(model, questions)
                if part == "forget_v_lens"
                else fitted_lens_accuracies(model, questions, data.general, lens_targets)
            )
        elif part not in data.questions:
            continue  # (held-out facts, in a study that holds none out)
        else:
            out[part] = accuracies(ask(model, data.questions[part]))
    return out


# --------------------------------------------------------------------------------------------
# The run


#: A removal: given the model, a context manager that holds it (hooks held for the block).
Removal = Callable[[Any], contextlib.AbstractContextManager]


def no_removal(model: Any) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


class Scores:
    """``scores.jsonl``: one line per measured state, the file rewritten atomically as soon as
    a state is measured (a kill leaves the last whole file; a torn line is redone)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.states: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                # A line torn by a kill is the last one, and its state is simply redone.
                with contextlib.suppress(json.JSONDecodeError):
                    record = json.loads(line)
                    self.states[record["state"]] = record

    def add(self, record: dict[str, Any]) -> None:
        self.states[record["state"]] = record
        lines = [json.dumps(r, sort_keys=True) for r in self.states.values()]
        atomic_write_text(self.path, "\n".join(lines) + "\n")


def _neuron_removals(
    model: Any, data: StudyData, config: FactsConfig, directory: Path
) -> tuple[dict[str, Removal], int]:
    """The ranked neurons and their control (as many random neurons in each layer), ranked on
    the recall positions of forget against retain facts; read back on resumption."""
    paths = {arm: directory / f"neurons-{arm}.json" for arm in ("removal", "control")}
    if all(p.exists() for p in paths.values()):
        sets = {arm: NeuronSet.load(p) for arm, p in paths.items()}
    else:
        removal = NeuronSet.top_fraction(
            recall_ranking(model, data.recall, config.method), config.fraction
        )
        sets = {"removal": removal, "control": removal.random_matching(seed=config.seed)}
        for arm, neurons in sets.items():
            neurons.save(paths[arm])
    return {
        arm: functools.partial(ablate, neurons=neurons, permanent=True)
        for arm, neurons in sets.items()
    }, len(sets["removal"])


def _erasure_removals(
    model: Any, data: StudyData, config: FactsConfig, directory: Path
) -> tuple[dict[str, Removal], int]:
    """A LEACE eraser (or the difference-of-means direction) of forget against retain at the
    recall positions, held at every layer's residual stream, and its matched control (random
    directions removing as much of each layer's variance); read back on resumption."""
    paths = {arm: directory / f"erasure-{arm}.safetensors" for arm in ("removal", "control")}
    if all(p.exists() for p in paths.values()):
        erasures = {arm: LinearErasure.load(p) for arm, p in paths.items()}
    else:
        fit = fit_leace if config.removal == "leace" else fit_direction
        layers = list(range(int(model.cfg.n_layers)))
        removal = fit(model, data.recall, FORGET, layers)
        erasures = {
            "removal": removal,
            "control": fit_matched_control(model, data.recall, removal, seed=config.seed),
        }
        for arm, erasure in erasures.items():
            erasure.save(paths[arm])
    return {
        arm: functools.partial(erase, erasure=erasure, permanent=True)
        for arm, erasure in erasures.items()
    }, erasures["removal"].rank


def _unlearn(
    model: Any, data: StudyData, config: FactsConfig, forget: ConceptDataset
) -> dict[str, Any]:
    """Edit ``model`` in place by the config's weight-editing removal on ``forget`` against the
    retain facts; returns what the manifest records of it."""
    retain = _dataset(
        [r.sentence for r in render_facts(data.edit_retain, TRAIN_TEMPLATES, RETAIN)],
        model,
        config,
    )
    if config.removal == "graddiff":
        history = gradient_difference(
            model,
            forget,
            retain,
            answer_loss,
            config.graddiff_steps,
            config.graddiff_lr,
            config.batch_size,
            config.seed,
            retain_weight=config.graddiff_retain_weight,
        )
        return {"history": history}
    # The steering norm is stated against the residual scale of the removal's forget facts,
    # for the removal and its control alike: both arms steer to the same c.
    scale = mean_residual_norm(model, data.train["same"], config.rmu_layer)
    steering = config.rmu_steering * scale
    history = rmu(
        model,
        forget,
        retain,
        config.rmu_layer,
        config.rmu_updated_layers,
        steering,
        config.rmu_alpha,
        config.rmu_steps,
        config.rmu_lr,
        config.batch_size,
        config.seed,
    )
    return {"mean_residual_norm": scale, "steering_norm": steering, "history": history}


@contextlib.contextmanager
def _edited(model: Any, tensors: dict[str, Tensor]) -> Iterator[None]:
    """The edited weights loaded over the model's (the caller restores the base after)."""
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise NeuroplasticError(
            f"a kept weight edit names tensors this model does not have "
            f"({', '.join(result.unexpected_keys[:3])}...): it was made with another model or "
            "library version; remove the seed's edit-*.safetensors and edits.json to redo it"
        )
    yield


def _edit_removals(
    model: Any, data: StudyData, config: FactsConfig, directory: Path
) -> tuple[dict[str, Removal], int]:
    """Gradient difference or RMU on the forget facts (T and V), and its control: the same
    method, settings and batches' schedule on as many held-out known facts of the relation.
    Each edit's changed tensors are kept in
    ``edit-<arm>.safetensors``, their digest and the run's loss terms in ``edits.json``; a
    resumed run loads them back (and redoes an edit whose file does not match its digest).
    Returns the removals and the number of weights the removal changed."""
    from safetensors.torch import load, save

    manifest_path = directory / "edits.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    base: dict[str, Tensor] | None = None
    edits: dict[str, dict[str, Tensor]] = {}
    for arm in ("removal", "control"):
        path = directory / f"edit-{arm}.safetensors"
        record = manifest.get(arm)
        if arm == "removal":
            facts = [*data.split.forget_t, *data.split.forget_v]
            forget = data.train["same"]
        else:
            facts, forget = data.control_forget(model, config)
        if record and record["forget_facts"] != [f.key for f in facts]:
            raise NeuroplasticError(
                f"{directory}/edits.json: the kept {arm} edit unlearned other facts than this "
                "seed's split gives; it was made under other settings: give another --out"
            )
        if record and path.exists():
            payload = path.read_bytes()
            if hashlib.sha256(payload).hexdigest() == record["sha256"]:
                edits[arm] = load(payload)
                continue
        measured = [s for s in Scores(directory / "scores.jsonl").states if s != "base"]
        if measured:
            raise NeuroplasticError(
                f"{directory}: the {arm} edit must be redone ({path.name} is missing or does "
                f"not match its digest), but {len(measured)} states were measured with the "
                "old one; remove the seed's scores.jsonl too to redo them all"
            )
        if base is None:
            base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        started = time.time()
        with _restored(model, base):
            record = _unlearn(model, data, config, forget)
            edits[arm] = changed_tensors(model, base)
        payload = save(edits[arm])
        atomic_write_bytes(path, payload)
        manifest[arm] = {
            "method": config.removal,
            "sha256": hashlib.sha256(payload).hexdigest(),
            "tensors": sorted(edits[arm]),
            "forget_facts": [f.key for f in facts],
            "seconds": round(time.time() - started, 1),
            **record,
        }
        atomic_write_json(manifest_path, manifest)
    # Tied weights (an embedding that is also the unembedding) are one storage kept under each
    # name: count each storage once.
    state = model.state_dict()
    changed = sum({state[n].data_ptr(): int(state[n].numel()) for n in edits["removal"]}.values())
    return {
        arm: functools.partial(_edited, tensors=tensors) for arm, tensors in edits.items()
    }, changed


def _changed_settings(directory: Path, config: FactsConfig) -> list[str]:
    """The settings that differ between ``config`` and the run recorded in ``directory`` (none
    when there is none). The protocols and the best case's learning rates and adapters may
    change: their states are their own, so a rerun with more adds states beside the others."""
    path = directory / "config.json"
    if not path.exists():
        return []
    now = config.to_dict()
    # A setting added since the run was made reads as its default, or as what the run did
    # before the setting existed.
    recorded = {**FactsConfig().to_dict(), **BEFORE_THE_SETTING, **json.loads(path.read_text())}
    growable = ("protocols", "best_case_lrs", "best_case_adapters")
    return sorted(
        k
        for k in {*recorded, *now}
        if k not in growable and recorded.get(k) != now.get(k) and uses_setting(config.removal, k)
    )


def uses_setting(removal: str, name: str) -> bool:
    """Whether a study of ``removal`` depends on the setting ``name``: the weight edits'
    settings matter to their own removal only (a neurons run resumes whatever they say)."""
    if name.startswith(("graddiff_", "rmu_")):
        return name.split("_")[0] == removal
    if name == "edit_retain":
        return removal in WEIGHT_EDITS
    return True


def check_resumable(config: FactsConfig, seeds: Sequence[int], root: Path) -> None:
    """Refuse, before any model loads, to resume a seed of ``root`` under other settings."""
    for seed in seeds:
        directory = root / f"seed-{seed}"
        changed = _changed_settings(directory, replace(config, seed=seed))
        if changed:
            raise NeuroplasticError(
                f"{directory} holds a facts run with other settings ({', '.join(changed)}); "
                "rerun with its settings to resume, or give another --out"
            )


def _check_config(directory: Path, config: FactsConfig) -> None:
    """Refuse to resume under other settings (:func:`_changed_settings`), then record these."""
    check_resumable(config, [config.seed], directory.parent)
    atomic_write_json(directory / "config.json", config.to_dict())


def lr_tag(learning_rate: float) -> str:
    """How a best-case learning rate names its states: ``heldout@0.0001/removal``."""
    return f"@{learning_rate:g}"


def retrainers(config: FactsConfig) -> dict[str, tuple[float, str]]:
    """Each retrainer of a protocol's arms by the tag its states carry, as (learning rate,
    adapter): the main one (tag ``""``), then every other learning rate with the main adapter,
    then each best-case adapter at every rate (``@lora``, ``@lora@0.0001``)."""
    rates = [config.learning_rate, *config.best_case_lrs]
    out: dict[str, tuple[float, str]] = {}
    for adapter in (config.relearn_adapter, *config.best_case_adapters):
        for rate in rates:
            tag = "" if adapter == config.relearn_adapter else f"@{adapter}"
            tag += "" if rate == config.learning_rate else lr_tag(rate)
            out[tag] = (rate, adapter)
    return out


def states_of(protocols: Sequence[str], tags: Sequence[str] = ("",)) -> list[str]:
    """Every state a seed measures, in the order it measures them: base, each removal alone,
    then each retrainer's (``tags``, the main one ``""`` first) protocols and arms."""
    return ["base", "removal", "control"] + [
        f"{protocol}{tag}/{arm}" for tag in tags for protocol in protocols for arm in ARMS
    ]


#: What is measured of base and of each removal alone: forget-V and T, retain, general loss,
#: and the held-out facts of the forget relation where some are held out.
EVERYTHING = ("forget_v", "forget_t", "retain", "held_out", "general", *LENSES)
#: What is measured after retraining: V, the question, V through both lenses at every layer,
#: and the general loss (a retraining that wrecks the model is no relearning). T is trained on
#: under heldout, retain under retain.
RETRAINED = ("forget_v", "general", *LENSES)


def run_states(
    model: Any,
    data: StudyData,
    config: FactsConfig,
    removals: dict[str, Removal],
    scores: Scores,
    log: Callable[[str], None] = report_line,
    gainers: Gainers | None = None,
) -> None:
    """Measure every state not yet in ``scores``: base, each removal alone, and each
    protocol's retraining in each arm, every one from the base weights. ``gainers``: the
    surviving neurons that gain saliency in the held arms are found from each retrained model
    too, and written before its scores (:mod:`neuroplastic.experiment.facts_gainers`)."""
    removals = {"none": no_removal, **removals}
    base_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tools = retrainers(config)
    read = hasattr(model, "run_with_cache")  # (a planted toy has no lens: see measure)
    targets: Tensor | None = None

    def base_output() -> Tensor | None:
        """Base's last layer on the general text, what every state's fitted lens predicts:
        taken once, from the base weights with nothing held."""
        nonlocal targets
        if targets is None and read:
            with _restored(model, base_weights):
                targets = final_residuals(model, data.general)
        return targets

    unread: dict[str, list[str]] = {}
    for state in states_of(config.protocols, list(tools)):
        retraining, _, arm = state.rpartition("/")
        protocol, at, tag = retraining.partition("@")
        arm = arm if arm in removals else "none"  # "base" holds nothing
        if state in scores.states:
            if gainers is not None:
                gainers.note_resumed(state)  # never retrained for gainers alone
            record = scores.states[state]
            missing = [part for part in LENSES if part not in record] if read else []
            if missing and protocol:
                unread[state] = missing  # its retrained model is not kept
            elif missing:
                # Measured before a lens existed: base and a removal alone are rebuilt exactly
                # (the base weights, the arm held), so only the missing lens is measured.
                lens_targets = base_output()
                with _restored(model, base_weights), removals[arm](model):
                    scores.add(record | measure(model, data, missing, lens_targets))
                log(f"seed {config.seed} {state}: read through the {_lens_names(missing)} now")
            continue
        started = time.time()
        learning_rate, adapter = tools[at + tag]
        lens_targets = base_output()
        follow = gainers is not None and gainers.pending(state)
        if follow:
            with _restored(model, base_weights):
                gainers.prepare(model, arm, removals[arm])
        with _restored(model, base_weights), removals[arm](model):
            if protocol:
                _retrain(model, data, config, protocol, learning_rate, adapter)
            record = measure(model, data, RETRAINED if protocol else EVERYTHING, lens_targets)
            # Here and only here the model is this state's retrained one.
            found = gainers.retrained(model, state) if follow else None
        if found is not None:
            # Back at the start, the arm still held: the views' "before" side, then the file.
            with _restored(model, base_weights), removals[arm](model):
                gainers.save(model, found)
        record |= {"state": state, "seconds": round(time.time() - started, 1)}
        scores.add(record)
        log(f"seed {config.seed} {state}: V {record['forget_v']['multiple_choice']:.3f}")
    if unread:
        parts = [part for part in LENSES if any(part in m for m in unread.values())]
        log(
            f"seed {config.seed}: {len(unread)} retrained states were measured before the "
            f"{_lens_names(parts)} existed, and retrained models are not kept: none for them "
            f"(n/a in the measures), e.g. {next(iter(unread))}"
        )


def _lens_names(parts: Sequence[str]) -> str:
    names = {"forget_v_lens": "logit lens", "forget_v_fitted": "fitted lens"}
    return " and ".join(names[part] for part in parts)


def run_facts_seed(
    config: FactsConfig,
    root: str | Path,
    model: Any | None = None,
    log: Callable[[str], None] = report_line,
) -> dict[str, Any]:
    """One seed of the study into ``root/seed-<seed>/``; returns its summary. Resumes."""
    root = Path(root)
    directory = root / f"seed-{config.seed}"
    directory.mkdir(parents=True, exist_ok=True)
    _check_config(directory, config)
    if model is None:
        model = load_model(config.model, device=config.device)
    model.eval()
    data = StudyData(model, config, root)
    scores = Scores(directory / "scores.jsonl")
    make = (
        _neuron_removals
        if config.removal == "neurons"
        else _edit_removals
        if config.removal in WEIGHT_EDITS
        else _erasure_removals
    )
    removals, size = make(model, data, config, directory)
    gainers = _gainers(model, data, config, directory, log)
    run_states(model, data, config, removals, scores, log, gainers)
    summary = {
        "config": config.to_dict(),
        "sizes": data.sizes(),
        "removed": size,
        "states": scores.states,
        "measures": seed_measures(
            scores.states, config.protocols, [t for t in retrainers(config) if t]
        ),
    }
    atomic_write_json(directory / "summary.json", summary)
    return summary


def _gainers(
    model: Any, data: StudyData, config: FactsConfig, directory: Path, log: Callable[[str], None]
) -> Gainers | None:
    """The gainers of a neuron removal and its control; None for any other removal, which
    holds no neurons and so leaves no fixed population of survivors to follow (said once per
    seed)."""
    if config.removal != "neurons":
        log(f"seed {config.seed}: gainers are followed for removal=neurons only; none here")
        return None
    held = {arm: NeuronSet.load(directory / f"neurons-{arm}.json") for arm in HELD_ARMS}
    return Gainers(directory, data, config, held, lambda s: _dataset(s, model, config), log)


@contextlib.contextmanager
def _restored(model: Any, weights: dict[str, Tensor]) -> Iterator[None]:
    """The base weights before the block and after it: every state starts from base."""
    model.load_state_dict(weights)
    try:
        yield
    finally:
        model.load_state_dict(weights)
        model.eval()


def _retrain(
    model: Any,
    data: StudyData,
    config: FactsConfig,
    protocol: str,
    learning_rate: float | None = None,
    adapter: str = "full",
) -> None:
    """``config.steps`` AdamW steps on the protocol's data (at ``learning_rate``, by default
    the config's), the seed's batches: every arm of a protocol sees the same batches in the
    same order. With ``adapter="lora"`` only LoRA adapters of rank ``config.lora_rank`` train
    (the removal's hooks still held), and are merged into the weights after: the model is
    then measured as retrained, and the caller's restore of the base weights undoes it."""
    loss = lm_loss if protocol == "unrelated" else answer_loss
    settings = TrainConfig(
        learning_rate=learning_rate or config.learning_rate,
        batch_size=config.batch_size,
        weight_decay=0.0,
    )

    def run() -> None:
        # No gradient left over from an earlier state: clipping measures every parameter's
        # gradient, and one a LoRA retraining does not train would still count.
        model.zero_grad(set_to_none=True)
        train(
            model,
            loss,
            data.train[protocol],
            config.steps,
            settings,
            seed=config.seed,
            progress=False,
            description=f"retraining ({protocol})",
        )
        model.zero_grad(set_to_none=True)

    if adapter == "lora":
        # PEFT draws each adapter's A at random: from the seed, so that every arm of a
        # protocol starts from the same adapters, and a rerun from the same ones again.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            with lora_adapters(model, rank=config.lora_rank) as adapters:
                run()
                for layer in adapters.layers:
                    layer.merge()
        return
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    run()


def check_seeds(seeds: Sequence[int]) -> None:
    if not seeds or len(set(seeds)) != len(seeds):
        raise NeuroplasticError(f"give distinct seeds, at least one; got {list(seeds)}")


def run_facts_study(
    config: FactsConfig,
    seeds: Sequence[int],
    root: str | Path,
    log: Callable[[str], None] = report_line,
    model: Any | None = None,
) -> dict[str, Any]:
    """Every seed (one model load, or ``model`` when given; each seed resumable), then
    ``root/facts.json`` (:func:`write_study`)."""
    check_seeds(seeds)
    root = Path(root)
    if (root / COMPARISON_FILE).exists():
        raise NeuroplasticError(
            f"{root} holds a grid of facts studies ({COMPARISON_FILE}), not one study: rerun "
            f"it with its --grid, or give --out {root}/<cell> to run one of its cells"
        )
    check_resumable(config, seeds, root)
    started = time.time()
    if model is None:
        model = load_model(config.model, device=config.device)
    summaries = [
        run_facts_seed(replace(config, seed=seed), root, model=model, log=log) for seed in seeds
    ]
    return write_study(config, seeds, root, summaries, time.time() - started)


def write_study(
    config: FactsConfig,
    seeds: Sequence[int],
    root: Path,
    summaries: Sequence[dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    """``root/facts.json`` from its seeds' summaries (:func:`run_facts_seed`, in the order of
    ``seeds``): each measure's mean and interval across the seeds, with every seed's measures
    and scores; returns what it wrote."""
    study = {
        "config": {**config.to_dict(), "seed": None},
        "seeds": list(seeds),
        "sizes": {
            f"seed-{s}": summary["sizes"] for s, summary in zip(seeds, summaries, strict=True)
        },
        "removed": [summary["removed"] for summary in summaries],
        "measures": aggregate(summaries),
        # Every seed's own measures and scores, so that this one file holds the whole study.
        "per_seed": {
            str(s): {"measures": summary["measures"], "states": summary["states"]}
            for s, summary in zip(seeds, summaries, strict=True)
        },
        "seconds_this_call": round(seconds),
    }
    atomic_write_json(root / "facts.json", study)
    return study
