"""Setting up a run (:func:`_setup`): the model and the data loaded, encoded and checked, the
head initialised, the run's record of its sentences written."""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from neuroplastic import distributed
from neuroplastic.config import ExperimentConfig
from neuroplastic.core.ablation import check_can_regrow
from neuroplastic.core.halves import split_probe
from neuroplastic.core.models import check_device, is_decoder, load_model, model_device
from neuroplastic.core.relearn import relearn_data
from neuroplastic.core.training import TokenClassifier, check_batch_split
from neuroplastic.data.concept import ConceptDataset
from neuroplastic.data.load import concept_labels, load_corpus
from neuroplastic.data.overlap import mention_overlap
from neuroplastic.data.types import NerCorpus, NerSentence
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.checks import (
    _check_model_fits,
    _check_processes,
    _check_same_data,
    _check_same_sentences,
)
from neuroplastic.experiment.setup import Setup, StageEvent
from neuroplastic.store.checkpoint import Checkpointer
from neuroplastic.store.rundir import RunDir

# The size of CoNLL-2003's training split: the embedded corpus's "whole split"
# (--train-sentences 0), so the paper's recipe in epochs means the same number of steps.
CONLL2003_TRAIN_SENTENCES = 14_041


def _setup(
    config: ExperimentConfig,
    store: Checkpointer,
    progress: bool,
    log,
    device: str | None = None,
    on_stage: Callable[[StageEvent], None] | None = None,
) -> Setup:
    """``device``: this process's (one GPU per process when launched), else the config's;
    ``on_stage``: told of every :class:`StageEvent`."""
    # The model's own weights never depend on the seed (a tiny random model is always the same
    # one): a seed changes the head, the data order, dropout and the sentences sampled.
    device = device or config.device
    check_device(device)
    _check_processes(config)
    model = load_model(
        config.model, device=device, dtype=weights_dtype(config), device_map=config.device_map
    )
    _check_model_fits(config, model)
    if config.task == "lm" and not is_decoder(model):
        raise NeuroplasticError(
            f"the causal LM task needs a decoder model (GPT-2 family); {config.model} is an "
            "encoder. Use --task ner"
        )
    if config.mode == "regrow":
        check_can_regrow(model)
    if config.removal != "neurons":
        config.erasure_layers(int(model.cfg.n_layers))  # a layer the model lacks fails now
    corpus = load_corpus(
        config.dataset,
        n_train=config.train_sentences or CONLL2003_TRAIN_SENTENCES,
        n_validation=config.validation_sentences,
        n_probe=config.probe_sentences,
        seed=config.seed,
    )
    train, probe = _train_and_probe(corpus, config)
    validation = corpus.validation[: config.validation_sentences]
    if len(validation) < config.validation_sentences:
        log(
            f"note: --validation-sentences {config.validation_sentences} asks for more than "
            f"the {len(validation)} validation sentences of {config.dataset}; evaluating on "
            "all of them"
        )
    encode = partial(
        ConceptDataset,
        tokenizer=model.tokenizer,
        label_names=concept_labels(corpus),
        tag_names=corpus.tag_names,
        max_length=config.max_length,
    )
    train_data, validation_data, probe_data = encode(train), encode(validation), encode(probe)
    if config.batch_size > len(train_data):
        raise NeuroplasticError(
            f"--batch-size {config.batch_size} exceeds the {len(train_data)} training sentences: "
            f"each batch would repeat sentences; give at most {len(train_data)}"
        )
    for name, data in (("validation", validation_data), ("probe", probe_data)):
        data.label_id(config.concept)  # an unknown concept fails before any training
        if data.label_counts()[config.concept] == 0:
            cut = (
                f" within their first {config.max_length} tokens ({data.n_truncated} of them "
                "are longer and cut there: raise --max-length if the concept lies further on)"
                if data.n_truncated
                else ""
            )
            raise NeuroplasticError(
                f"concept {config.concept!r} has no tokens in the {name} sentences{cut}"
            )
        if data.n_truncated:
            log(
                f"note: {data.n_truncated} {name} sentences are longer than max_length="
                f"{config.max_length} tokens; their words past it are left out"
            )
    overlap = {
        "validation_seen_in_train": mention_overlap(train, validation),
        "probe_seen_in_train": mention_overlap(train, probe),
    }
    torch.manual_seed(config.seed)  # the head's initialisation
    module = TokenClassifier(model, len(train_data.tag_names)) if config.task == "ner" else model
    module.to(model_device(model))  # the head joins the model (its first device under a map)
    if distributed.is_main():
        tokens = [probe_data.token_strings(i) for i in range(len(probe_data))]
        _check_same_sentences(store.run, tokens, config.dataset)
        _check_same_data(
            store.run, {"train": train, "validation": validation, "probe": probe}, config.dataset
        )
        store.run.write_sentences(tokens)
        _write_token_embeddings(store.run, model, probe_data)
    base_steps, stage_steps = config.steps(len(train_data))
    relearned = relearn_data(train_data, config)  # refuses an empty retain set up front
    if relearned is not train_data:
        check_batch_split(config.batch_size)
    return Setup(
        config, store, module, model, train_data, validation_data, probe_data, overlap, progress,
        base_steps, stage_steps, distributed.replicate(module, device),
        split_probe(len(probe_data), config.seed), relearned, on_stage=on_stage,
    )  # fmt: skip


def _train_and_probe(
    corpus: NerCorpus, config: ExperimentConfig
) -> tuple[list[NerSentence], list[NerSentence]]:
    """Training sentences and probe sentences, never the same ones.

    A corpus with its own probe split (the embedded one: names the training never sees) gives
    the probe; otherwise both are drawn, by the seed, from disjoint parts of the train split.
    """
    if corpus.probe:
        train, probe = corpus.train[: config.train_sentences or None], corpus.probe
        if len(probe) < config.probe_sentences:
            raise NeuroplasticError(
                f"{corpus.name} has {len(probe)} probe sentences; --probe-sentences asks for "
                f"{config.probe_sentences}"
            )
        return train, probe[: config.probe_sentences]
    n_train = config.train_sentences or len(corpus.train) - config.probe_sentences
    needed = n_train + config.probe_sentences
    if n_train <= 0 or len(corpus.train) < needed:
        raise NeuroplasticError(
            f"the train split of {corpus.name} has {len(corpus.train)} sentences, but training "
            f"takes --train-sentences {n_train} and the probe (neuron "
            f"statistics) --probe-sentences {config.probe_sentences} others, {needed} in all. "
            "Lower them so that their sum is at most the split's size"
        )
    order = list(range(len(corpus.train)))
    random.Random(f"neuroplastic-sample-{config.seed}").shuffle(order)
    train = [corpus.train[i] for i in order[:n_train]]
    probe = [corpus.train[i] for i in order[n_train:needed]]
    return train, probe


def weights_dtype(config: ExperimentConfig) -> str:
    """The dtype the model's weights are held in: ``--dtype``, but float32 for float16, which
    trains in mixed precision (float16 compute under autocast, float32 master weights and
    optimizer state): AdamW's eps (1e-8) is 0 in float16, and a weight with a zero gradient
    would become NaN after one step."""
    return "float32" if config.dtype == "float16" else config.dtype


def _token_embeddings(model: Any, data: ConceptDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's input embeddings (float32, CPU) of every token in ``data``: ids, vectors."""
    token_ids = torch.tensor(sorted({t for e in data.encoded for t in e.token_ids}))
    with torch.no_grad():
        embeddings = model.W_E[token_ids.to(model.W_E.device)].detach().float().cpu()
    return token_ids, embeddings


def _write_token_embeddings(run: RunDir, model: Any, data: ConceptDataset) -> None:
    run.write_token_embeddings(*_token_embeddings(model, data))
