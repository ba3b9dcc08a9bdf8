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

This module is the study's flow, one seed (:func:`run_facts_seed`) and every seed
(:func:`run_facts_study`); each step lives in its own module, in the order it runs: the
settings checked against the seed's record (:mod:`~neuroplastic.experiment.facts_resumption`),
the facts known, split and asked (:mod:`~neuroplastic.experiment.facts_data`), the removal and
its control (:mod:`~neuroplastic.experiment.facts_removals`), then every state retrained and
measured (:mod:`~neuroplastic.experiment.facts_states`, scored by
:mod:`~neuroplastic.experiment.facts_scoring`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from neuroplastic.analysis.facts_measures import aggregate, seed_measures
from neuroplastic.core.models import load_model
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.facts_data import StudyData, facts_dataset
from neuroplastic.experiment.facts_gainers import HELD_ARMS, Gainers
from neuroplastic.experiment.facts_grid_plan import COMPARISON_FILE
from neuroplastic.experiment.facts_removals import removals_of
from neuroplastic.experiment.facts_resumption import check_and_record_config, check_resumable
from neuroplastic.experiment.facts_scoring import Scores
from neuroplastic.experiment.facts_states import retrainers, run_states
from neuroplastic.facts_config import FactsConfig
from neuroplastic.io import atomic_write_json
from neuroplastic.progress import report_line


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
    check_and_record_config(directory, config)
    if model is None:
        model = load_model(config.model, device=config.device)
    model.eval()
    data = StudyData(model, config, root)
    scores = Scores(directory / "scores.jsonl")
    removals, size = removals_of(model, data, config, directory)
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
    holds no neurons and so leaves no fixed population of survivors to follow (the study says
    so once: :func:`gainers_note`)."""
    if config.removal != "neurons":
        return None
    held = {arm: NeuronSet.load(directory / f"neurons-{arm}.json") for arm in HELD_ARMS}
    return Gainers(directory, data, config, held, lambda s: facts_dataset(s, model, config), log)


def gainers_note(config: FactsConfig) -> str | None:
    """What a study of ``config`` logs once, before its first seed, when it follows no gainers
    (:func:`_gainers`); None when it does. Once per study and not per seed: a grid runs every
    cell's seeds in turn, and a line per seed and cell would bury the progress lines."""
    if config.removal == "neurons":
        return None
    return "gainers are followed for removal=neurons only; none here"


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
    note = gainers_note(config)
    if note:
        log(note)
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
