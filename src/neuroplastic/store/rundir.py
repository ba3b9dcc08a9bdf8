"""The layout of a run directory, and the one place that reads and writes its artifacts.

```
DIR/
  config.json                      the ExperimentConfig used (a rerun must match it) and the
                                   directory's "format" version (config.RUN_FORMAT)
  summary.json                     {"config", "arms": {arm: {"neurons", "stages": [...]}}}
  metrics.jsonl                    one evaluation per line: {"arm", "stage", "step", "f1", ...}
  neurons/{arm}.json               the ablated NeuronSet of each arm (empty for an erasure)
  removals/{arm}.safetensors       with --removal leace|direction: the erasure each arm holds
  data.json                        each split's sentence count and SHA-256 of its words and tags
                                   (neuroplastic.data.fingerprint): a resumption checks it
  sentences.json                   token strings of the sentences the statistics were taken on
  token_embeddings.safetensors     "token_ids" [n] and "embeddings" [n, d_model]: the base
                                   model's input embeddings of every token in those sentences
  stages/{arm}/{stage}/ranking.parquet   layer, neuron, score, saliency, rank, layer_rank
                                         (NaN for dead neurons: they are not ranked)
  stages/{arm}/{stage}/stats.safetensors NeuronStats (counts, sums, top-k buffers)
  stages/{arm}/{stage}/top_tokens.parquet layer, neuron, k, value, sentence, position,
                                          token_id, token, label (the dataset-wide top-k)
  stages/{arm}/{stage}/sentence_activations.safetensors  at the first and last stage: the
                                   report's viewed neurons on every token of their top sentences
  stages/{arm}/{stage}/halves.safetensors the moments of each half of the probe sentences
                                          (predictors read one, ground truths the other:
                                          neuroplastic.core.halves)
  checkpoints/{arm}/{stage}.safetensors  model and head weights (with --save-checkpoints)
  state/                           resume state (internal)
  manifest.json                    size and sha256 of every stage, state and checkpoint file
  .lock                            held (flock) by the run writing the directory; its PID
  report.html
```
Stages are named ``base``, ``pruned``, ``retrain-1`` ... ``retrain-S``; a chase (``--rounds``)
adds ``r2-pruned``, ``r2-retrain-1`` ... per later round, whose neuron sets are in
``neurons/{arm}-r{R}.json``. Arms are ``concept`` and ``random``, and with ``--preempt``
``preempt``, ``preempt-random`` and (for a predictor) ``preempt-oracle``; a chase adds
``one-shot`` (every round's neurons from base at once, one round). Stage artifacts are read
only as the manifest recorded them (:mod:`neuroplastic.store.manifest`).

Every reader turns a file that cannot be read (truncated, garbage, the wrong structure) into a
:class:`CorruptFile` that says what to do: the derived files (summary, metrics, neuron sets,
sentences, token embeddings) and the stage files whose weights the run kept are recomputed by
rerunning ``neuroplastic run`` on the directory (:meth:`Checkpointer.check_config`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch

from neuroplastic.config import CONCEPT_ARM, NAIVE_ARM, ONE_SHOT_ARM, PREEMPT_ARMS, RANDOM_ARM
from neuroplastic.core.halves import HALVES_FILE, load_halves, save_halves
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.similarity import TokenEmbeddings
from neuroplastic.core.stats import NeuronStats
from neuroplastic.errors import NeuroplasticError
from neuroplastic.io import atomic_write_bytes, atomic_write_json
from neuroplastic.store.manifest import CONFIG_FILE, MANIFEST, CorruptFile, Manifest, describe

T = TypeVar("T")

ARMS = (CONCEPT_ARM, RANDOM_ARM, *PREEMPT_ARMS, ONE_SHOT_ARM, NAIVE_ARM)
#: The files of one stage; ``ranking.parquet`` is written last.
STAGE_FILES = ("stats.safetensors", "top_tokens.parquet", "ranking.parquet")
#: written at a run's end for the first and last stage of each arm: the whole-sentence
#: activations of the neurons the report views (not every stage has one)
SENTENCE_ACTIVATIONS_FILE = "sentence_activations.safetensors"


def stage_owner(arm: str, stage: str) -> str:
    """The arm whose record and weights ``stage`` of ``arm`` is: the base is the concept arm's,
    shared by every arm but the naive one, which fine-tunes its own."""
    return arm if stage != "base" or arm == NAIVE_ARM else CONCEPT_ARM


def file_owner(relative: str | Path) -> tuple[str, str, str] | None:
    """What wrote a run file, from its path relative to the run directory: ``("stage", arm,
    stage)`` for ``stages/{arm}/{stage}/*``, ``("state" | "checkpoint", arm, stage)`` for
    ``state/{arm}/{stage}.*`` and ``checkpoints/{arm}/{stage}.safetensors``; None for the run's
    other files (its config, summary, neuron sets...)."""
    parts = Path(relative).parts
    if len(parts) == 4 and parts[0] == "stages":
        return "stage", parts[1], parts[2]
    if len(parts) == 3 and parts[0] in ("state", "checkpoints"):
        stage = parts[2].removesuffix(".trainer.pt").removesuffix(".safetensors")
        kind = "state" if parts[0] == "state" else "checkpoint"
        return kind, parts[1], stage.removesuffix(".json")
    return None


def stage_names(n_stages: int, rounds: int = 1) -> list[str]:
    """Every stage of an arm, in order: ``base``, then each round's (:func:`round_stages`)."""
    return ["base", *(name for r in range(1, rounds + 1) for name in round_stages(n_stages, r))]


def round_stages(n_stages: int, round_: int) -> list[str]:
    """Round 1: ``pruned``, ``retrain-1`` ... ``retrain-S``; a later round r the same names
    prefixed ``rR-`` (``r2-pruned``: right after round 2's neurons are added)."""
    prefix = "" if round_ == 1 else f"r{round_}-"
    return [f"{prefix}pruned", *(f"{prefix}retrain-{i}" for i in range(1, n_stages + 1))]


_ROUND = re.compile(r"r(\d+)-(.*)")


def stage_round(stage: str) -> int:
    """The chase round a stage belongs to (0 for ``base``); evaluations inside a stage
    (``retrain-1@10``) belong to its round."""
    name = stage.partition("@")[0]
    if name == "base":
        return 0
    match = _ROUND.fullmatch(name)
    return int(match.group(1)) if match else 1


def stage_key(stage: str) -> tuple[int, int]:
    """Sort key of a stage name in pipeline order; unknown names last."""
    name = stage.partition("@")[0]
    round_ = stage_round(name)
    match = _ROUND.fullmatch(name)
    rest = match.group(2) if match else name
    if rest in ("base", "pruned"):
        return round_, 0
    index = rest.removeprefix("retrain-")
    return (round_, int(index)) if index.isdigit() and rest != index else (10**9, 0)


def directory_kind(path: str | Path) -> str | None:
    """What ``path`` holds: ``"sweep"`` (a sweep's sweep.json or its per-seed runs), ``"run"``
    (one run's config, manifest or state) or None (nothing of either: new or empty)."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "sweep.json").is_file() or any(path.glob("*/seed-*/config.json")):
        return "sweep"
    if any((path / name).exists() for name in (CONFIG_FILE, MANIFEST, "state")):
        return "run"
    return None


@dataclass
class StageArtifacts:
    """What one evaluated stage leaves behind, loaded back."""

    arm: str
    stage: str
    ranking: Ranking
    stats: NeuronStats
    top_tokens: pd.DataFrame


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- paths --------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def data_path(self) -> Path:
        return self.path / "data.json"

    @property
    def sentences_path(self) -> Path:
        return self.path / "sentences.json"

    @property
    def token_embeddings_path(self) -> Path:
        return self.path / "token_embeddings.safetensors"

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    @property
    def state_dir(self) -> Path:
        return self.path / "state"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    @property
    def manifest(self) -> Manifest:
        return Manifest(self.path)

    def stage_dir(self, arm: str, stage: str) -> Path:
        return self.path / "stages" / arm / stage

    def neurons_path(self, arm: str, round_: int = 1) -> Path:
        """The neurons ``arm`` holds in ``round_`` (all rounds so far: each adds to the last)."""
        return self.path / "neurons" / (f"{arm}.json" if round_ == 1 else f"{arm}-r{round_}.json")

    def removal_path(self, arm: str) -> Path:
        """The erasure ``arm`` holds with ``--removal leace|direction`` (a result: listed in the
        manifest, since the base weights it was fitted on are not kept)."""
        return self.path / "removals" / f"{arm}.safetensors"

    def checkpoint_path(self, arm: str, stage: str) -> Path:
        return self.path / "checkpoints" / arm / f"{stage}.safetensors"

    def marker_path(self, arm: str, stage: str) -> Path:
        return self.state_dir / arm / f"{stage}.json"

    def weights_path(self, arm: str, stage: str) -> Path:
        return self.state_dir / arm / f"{stage}.safetensors"

    def trainer_path(self, arm: str, stage: str) -> Path:
        return self.state_dir / arm / f"{stage}.trainer.pt"

    # -- reading ------------------------------------------------------------------------------
    def require(self) -> None:
        if not self.summary_path.is_file():
            raise NeuroplasticError(
                f"{self.path} is not a finished neuroplastic run (no summary.json); run "
                f"`neuroplastic run --out {self.path}` first"
            )

    @property
    def rerun(self) -> str:
        """The command that resumes this run under its own settings."""
        return f"`neuroplastic run --out {self.path} --config {self.config_path}`"

    def recomputed_by_rerun(self) -> str:
        """The remedy for a derived file: every run rewrites it from the stages."""
        return f"rerun {self.rerun}: it recomputes the file from the run's stages"

    def config(self) -> dict[str, Any]:
        remedy = (
            "it holds the settings the run's results were computed under and nothing can "
            "recompute it; restore it, or rerun into a new --out"
        )
        return read_run_file(self.config_path, json_of(dict), remedy)

    def summary(self) -> dict[str, Any]:
        self.require()
        return read_run_file(self.summary_path, json_of(dict), self.recomputed_by_rerun())

    def metrics_rows(self) -> list[dict[str, Any]]:
        """The lines of metrics.jsonl; a bad line is named by its number."""
        remedy = self.recomputed_by_rerun()
        text = read_run_file(self.metrics_path, lambda p: p.read_bytes().decode("utf-8"), remedy)
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line:
                rows.append(
                    read_run_file(
                        self.metrics_path, json_of(dict, line), remedy, f"line {number}: "
                    )
                )
        return rows

    def metrics(self) -> pd.DataFrame:
        """One row per evaluation, with f1 columns flattened to ``f1_overall``, ``f1_LOC``..."""
        return pd.json_normalize(self.metrics_rows(), sep="_")

    def neurons(self, arm: str, round_: int = 1) -> NeuronSet:
        path = self.neurons_path(arm, round_)
        if not path.is_file():
            return NeuronSet.load(path)  # its own "not found" message

        def read(path: Path) -> NeuronSet:
            return NeuronSet.from_dict(_json(path, dict))

        return read_run_file(path, read, self.recomputed_by_rerun())

    def arms(self) -> list[str]:
        return [arm for arm in ARMS if self.neurons_path(arm).is_file()]

    def stages(self, arm: str) -> list[str]:
        """Stages of ``arm`` whose artifacts are all there (and recorded in the manifest: a
        stage cut short by a kill is not listed), in pipeline order."""
        root = self.path / "stages" / arm
        entries = self.manifest.entries()
        found = [
            p.name
            for p in (root.iterdir() if root.is_dir() else [])
            if all((p / name).is_file() for name in STAGE_FILES)
            and (entries is None or self.manifest.relative(p / "ranking.parquet") in entries)
        ]
        return sorted(found, key=stage_key)

    def stage(self, arm: str, stage: str) -> StageArtifacts:
        """A stage's artifacts, each verified against the run's manifest first."""
        directory = self.stage_dir(arm, stage)
        entries = self.manifest.entries()
        listed = entries is not None and self.manifest.lists(directory / "ranking.parquet")
        if not listed and not (directory / "ranking.parquet").is_file():
            raise NeuroplasticError(f"{directory}: no artifacts for stage {stage!r} of arm {arm!r}")
        readers: dict[str, Callable[[Path], Any]] = {
            "stats.safetensors": NeuronStats.load,
            "top_tokens.parquet": pd.read_parquet,
            "ranking.parquet": pd.read_parquet,
        }
        loaded = {}
        remedy = partial(self.stage_remedy, arm, stage)  # hashes weights: only when needed
        for name in STAGE_FILES:
            path = directory / name
            if entries is not None and not self.manifest.matches(path, entries):
                # An unreadable file is corrupt, and said so; a readable one that differs is
                # refused as not the run's, and a deleted one as deleted (verify says which).
                reason = unreadable(path) if path.is_file() else None
                if reason is not None:
                    raise CorruptFile(path, reason, remedy())
                self.manifest.verify(path, entries)
            loaded[name] = read_run_file(path, readers[name], remedy)
        concept, method = self._concept_and_method()
        ranking = read_run_file(
            directory / "ranking.parquet",
            lambda _: Ranking.from_frame(loaded["ranking.parquet"], concept, method),
            remedy,
        )
        return StageArtifacts(
            arm, stage, ranking, loaded["stats.safetensors"], loaded["top_tokens.parquet"]
        )

    def stage_remedy(self, arm: str, stage: str) -> str:
        """What to do about a stage file that cannot be read: rerun where the run kept what
        recomputes it (the weights after the stage, or the base weights its arm restarts
        from), else do without the stage or start over."""
        if self.saved_weights(arm, stage) is not None or (
            stage != "base" and self.saved_weights(CONCEPT_ARM, "base") is not None
        ):
            return f"rerun {self.rerun}: it recomputes the stage from the weights the run kept"
        return (
            f"the run no longer keeps the weights to recompute it from (--save-checkpoints "
            f"keeps them); delete {self.stage_dir(arm, stage)} to go on without that stage, "
            "or rerun into a new --out"
        )

    def saved_weights(self, arm: str, stage: str) -> Path | None:
        """The weights after ``stage`` of ``arm`` (the concept arm's for the base), as the
        run wrote them (state/, else checkpoints/), or None if the run no longer keeps them."""
        owner = stage_owner(arm, stage)
        entries = self.manifest.entries()
        if entries is None:
            return None  # nothing to check them against
        for path in (self.weights_path(owner, stage), self.checkpoint_path(owner, stage)):
            if self.manifest.matches(path, entries):
                return path
        return None

    def sentences(self) -> list[list[str]]:
        return read_run_file(self.sentences_path, json_of(list), self.recomputed_by_rerun())

    def data_fingerprint(self) -> dict[str, Any]:
        return read_run_file(
            self.data_path,
            json_of(dict),
            "delete it: the next run records the data it is given, unchecked this once",
        )

    def token_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(token_ids [n], embeddings [n, d_model])`` of the base model."""
        from safetensors.torch import load_file

        def read(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
            tensors = load_file(str(path))
            token_ids, embeddings = tensors["token_ids"], tensors["embeddings"]
            if token_ids.ndim != 1 or embeddings.ndim != 2 or len(token_ids) != len(embeddings):
                raise ValueError(
                    f"token_ids {tuple(token_ids.shape)} and embeddings "
                    f"{tuple(embeddings.shape)} should be [n] and [n, d_model]"
                )
            return token_ids, embeddings

        return read_run_file(self.token_embeddings_path, read, self.recomputed_by_rerun())

    def embeddings(self, center: bool = True) -> TokenEmbeddings:
        """The base model's input embeddings of every token in the run's sentences, to measure
        concept similarity with."""
        if not self.token_embeddings_path.is_file():
            raise NeuroplasticError(
                f"{self.token_embeddings_path} not found: the run directory has no token "
                "embeddings to measure concept similarity with"
            )
        token_ids, embeddings = self.token_embeddings()
        return TokenEmbeddings.from_vectors(token_ids, embeddings, center=center)

    def _concept_and_method(self) -> tuple[str, str]:
        config = self.config()
        try:
            return config["concept"], config["method"]
        except KeyError as error:
            raise CorruptFile(self.config_path, f"no {error}", "restore it") from error

    # -- writing ------------------------------------------------------------------------------
    def write_stage(
        self,
        arm: str,
        stage: str,
        ranking: Ranking,
        stats: NeuronStats,
        top_tokens: pd.DataFrame,
        halves: dict[str, NeuronStats] | None = None,
    ) -> list[Path]:
        """Write the stage's artifacts; returns their paths (``STAGE_FILES``, and the halves'
        moments when given)."""
        directory = self.stage_dir(arm, stage)
        stats.save(directory / "stats.safetensors")
        atomic_write_bytes(directory / "top_tokens.parquet", _parquet(top_tokens))
        written = []
        if halves is not None:
            save_halves(directory / HALVES_FILE, halves)
            written.append(directory / HALVES_FILE)
        # Written last: its presence marks the stage's artifacts complete.
        atomic_write_bytes(directory / "ranking.parquet", _parquet(ranking.to_frame()))
        return [*(directory / name for name in STAGE_FILES), *written]

    def stage_halves(self, arm: str, stage: str) -> dict[str, NeuronStats] | None:
        """The moments of each half of the probe sentences at a stage (``{"predict", "truth"}``,
        :mod:`neuroplastic.core.halves`), verified against the manifest; None for a run made before
        the probe sentences were split."""
        path = self.stage_dir(arm, stage) / HALVES_FILE
        if not path.is_file() and not self.manifest.lists(path):
            return None
        self.manifest.verify(path)
        return read_run_file(path, load_halves, partial(self.stage_remedy, arm, stage))

    def predictions_path(self, arm: str) -> Path:
        """Where an arm's predictions are saved: with its pruned stage, where they are read."""
        return self.stage_dir(arm, "pruned") / "predictions.safetensors"

    def sentence_activations_path(self, arm: str, stage: str) -> Path:
        return self.stage_dir(arm, stage) / SENTENCE_ACTIVATIONS_FILE

    def sentence_activations(self, arm: str, stage: str) -> dict[tuple[int, int, int], Any]:
        """The activations the run stored for its neuron views at ``stage`` of ``arm``:
        ``(layer, neuron, sentence) -> activation on every token of the sentence`` (numpy);
        empty where the run stored none (made before they existed, or never finished)."""
        path = self.sentence_activations_path(arm, stage)
        if not path.is_file():
            return {}
        self.manifest.verify(path)

        def read(path: Path) -> dict[tuple[int, int, int], Any]:
            from safetensors.numpy import load_file

            found = {}
            for key, values in load_file(str(path)).items():
                layer, neuron, sentence = (int(part) for part in key.split("."))
                found[layer, neuron, sentence] = values
            return found

        return read_run_file(path, read, self.recomputed_by_rerun())

    def write_sentence_activations(
        self, arm: str, stage: str, activations: dict[tuple[int, int, int], Any]
    ) -> Path:
        from safetensors.numpy import save

        path = self.sentence_activations_path(arm, stage)
        # contiguous copies: safetensors writes an array's buffer as it lies, strides ignored
        # (a column of a [pos, neuron] array would be saved as the wrong numbers)
        tensors = {
            f"{layer}.{neuron}.{sentence}": np.ascontiguousarray(values, dtype=np.float32)
            for (layer, neuron, sentence), values in sorted(activations.items())
        }
        return atomic_write_bytes(path, save(tensors))

    def write_data_fingerprint(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.data_path, record)

    def write_sentences(self, tokens: list[list[str]]) -> None:
        atomic_write_json(self.sentences_path, tokens)

    def write_token_embeddings(self, token_ids: torch.Tensor, embeddings: torch.Tensor) -> None:
        from safetensors.torch import save

        atomic_write_bytes(
            self.token_embeddings_path,
            save({"token_ids": token_ids.contiguous(), "embeddings": embeddings.contiguous()}),
        )


def unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read as the run file it is (by its name), or None if it can."""
    readers: dict[str, Callable[[Path], Any]] = {
        ".json": json_of(object),
        ".parquet": pd.read_parquet,
        ".pt": lambda p: torch.load(p, map_location="cpu", weights_only=True),
        ".safetensors": NeuronStats.load if path.name == "stats.safetensors" else _safetensors,
    }
    try:
        readers[path.suffix](path)
    except Exception as error:  # each format raises its own errors
        return describe(error, path)
    return None


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _json(source: Path | str, kind: type) -> Any:
    """JSON from a file (or a line of one), whose top level must be a ``kind``."""
    text = source if isinstance(source, str) else source.read_bytes().decode("utf-8")
    value = json.loads(text)
    if not isinstance(value, kind):
        raise ValueError(f"expected a JSON {kind.__name__}, found {type(value).__name__}")
    return value


def json_of(kind: type, line: str | None = None) -> Callable[[Path], Any]:
    """A reader of a JSON file (or of one ``line`` of it) whose top level is a ``kind``."""
    return lambda path: _json(path if line is None else line, kind)


def read_run_file(
    path: Path, read: Callable[[Path], T], remedy: str | Callable[[], str], where: str = ""
) -> T:
    """``read(path)``, with any failure to parse it as a :class:`CorruptFile` (``where`` in
    the file, then ``remedy``: what to do, or a function that says it)."""
    try:
        return read(path)
    except (CorruptFile, FileNotFoundError, PermissionError):
        raise  # already one line, or a file system error, not a corrupt file
    except Exception as error:  # json, safetensors, pyarrow, torch and from_dict: their own
        text = remedy if isinstance(remedy, str) else remedy()
        raise CorruptFile(path, where + describe(error, path), text) from error


def top_tokens_frame(stats: NeuronStats, tokenizer: Any) -> pd.DataFrame:
    """The dataset-wide top-k of every neuron as a long table (readable without the model)."""
    n_layers, d_mlp, k = stats.top_values.shape
    layer, neuron, rank = torch.meshgrid(
        torch.arange(n_layers), torch.arange(d_mlp), torch.arange(k), indexing="ij"
    )
    token_ids = stats.top_token.flatten()
    vocabulary = {t: tokenizer.decode([t]) for t in token_ids.unique().tolist()}
    return pd.DataFrame(
        {
            "layer": layer.flatten().numpy(),
            "neuron": neuron.flatten().numpy(),
            "k": rank.flatten().numpy(),
            "value": stats.top_values.flatten().numpy(),
            "sentence": stats.top_sentence.flatten().numpy(),
            "position": stats.top_position.flatten().numpy(),
            "token_id": token_ids.numpy(),
            "token": [vocabulary[t] for t in token_ids.tolist()],
            "label": [stats.label_names[i] for i in stats.top_label.flatten().tolist()],
        }
    )


def _parquet(frame: pd.DataFrame) -> bytes:
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
