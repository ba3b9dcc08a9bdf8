"""Benchmarks behind benchmarks/RESULTS.md; they print ratios measured side by side in one
process on the same batches, never pass/fail.

    python benchmarks/bench.py [--model embedded] [--device cpu] [--dtype float32]
                               [--sentences 256] [--sections stats,train,memory,...]
                               [--sizes 256,1024,4096] [--rounds 3] [--json FILE]

stats   the statistics pass against its floor (a plain forward to the last MLP, no statistics
        hooks), against run_with_cache of every mlp.hook_post and then ranking, and against the
        NeuroX way (every token's activations per layer written to disk, loaded, ranked with
        probeless): NeuroX's own loader and probeless ranker when ``neurox`` imports
        (``pip install --no-deps neurox h5py``), else that row is skipped;
train   a training step with the ablation held against a plain step;
corpus  generating the embedded synthetic corpus at its default size (4,000 + 800 sentences),
        once cold and once warm (no model needed; it was a timed test before);
probe   a stage end's statistics pass with the per-layer linear probes every stage takes (one
        logistic regression per layer's residual stream), their passes of their own
        (probe_auc) against the residual stream kept by a tap on the statistics pass
        (probe_auc_of), each over the statistics pass alone;
fold    the CPU's sparse top-k merge folded over several batches against made at every batch
        (the same statistics: checked), each beside the floor;
sort    the sparse merge's one-key sort against the two stable sorts it replaced (the same
        statistics: checked), each beside the floor;
prefilter  the sparse merge's threshold test with each block's maximum looked at first
        against every value compared (the same statistics: checked), each beside the floor,
        at each of --sizes sentences (the first batches' costs weigh less on a longer stream);
sums    each batch's sums per label by index_add_ against by matmul with the one-hot (the same
        counts and top-k, sums to float32 rounding: checked), each beside the floor, at each
        of --sizes sentences;
overlap the statistics pass reducing each layer on a CUDA side stream beside the forward
        against in line (the same statistics: checked), each beside the floor (on a CPU the
        two are the same code: a rehearsal);
adamw   a training step with AdamW's fused update against its default, on the same
        batches from the same weights, and the largest weight difference after them;
grouping  training steps with each 10 batches' sentences regrouped by length against drawn
        as they come, from the same weights on the same sentences, and the tokens each computes
        (real and padded) over 100 steps, also for groups of 50;
eval    an evaluation with its sentences batched by length against in corpus order (the same
        scores: checked), and the tokens each computes, padding included;
memory  peak memory of the statistics pass and of the cache at about 1k, 10k and 100k tokens,
        each in a fresh process (CPU: peak resident set over the loaded model; GPU: peak
        allocated over the loaded model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest.mock import patch

import torch

import neuroplastic.core.stats as stats_module
from neuroplastic.core.ablation import Ablation
from neuroplastic.core.models import load_model, mlp_hook_name, model_device, run_forward
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.stats import NeuronStats, collect_stats
from neuroplastic.core.training import (
    TokenClassifier,
    TrainConfig,
    Trainer,
    batch_order,
    evaluate,
    padding_share,
    tagging_loss,
)
from neuroplastic.data.concept import ConceptDataset
from neuroplastic.data.load import encode_split, load_corpus

BATCH = 32
ROUNDS = 3  # interleaved rounds per measurement (--rounds)
GROUP = 10  # training batches regrouped by length together in the grouping section


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 3) -> float:
    """Seconds per call: one warm-up call, then the mean of ``repeats``."""
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def interleaved(
    fns: dict[str, Any], device: torch.device, rounds: int | None = None
) -> dict[str, float]:
    """Seconds per call of each function, measured in alternating rounds (``ROUNDS`` unless
    given) so that a slow spell of the machine falls on all of them alike; the fastest round
    counts."""
    rounds = ROUNDS if rounds is None else rounds
    for fn in fns.values():
        fn()  # warm-up
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


DATASET = "embedded"  # or a CoNLL file/directory (--dataset): its train split is read


def dataset_of(model: Any, sentences: int, max_length: int = 64) -> ConceptDataset:
    if DATASET == "embedded":
        corpus = load_corpus(n_train=10, n_validation=sentences, seed=0)
        split = "validation"
    else:
        corpus, split = load_corpus(DATASET), "train"  # as many as it has, at most
    return encode_split(corpus, model.tokenizer, split, max_length=max_length, limit=sentences)


def n_tokens(data: ConceptDataset) -> int:
    return sum(len(e.token_ids) for e in data.encoded)


# -- statistics --------------------------------------------------------------------------------
def floor_pass(model: Any, data: ConceptDataset) -> None:
    last = mlp_hook_name(model.cfg.n_layers - 1)
    with torch.no_grad():
        for batch in data.batches(BATCH):
            run_forward(model, batch.tokens, batch.attention_mask, stop_at=last)


def stats_pass(
    model: Any,
    data: ConceptDataset,
    merge: str = "auto",
    overlap: bool = False,
    sums: str = "auto",
) -> NeuronStats:
    return collect_stats(
        model,
        data,
        batch_size=BATCH,
        top_k=20,
        progress=False,
        merge=merge,
        overlap=overlap,
        sums=sums,
    )


def cache_then_rank(model: Any, data: ConceptDataset, keep: bool = True) -> Ranking:
    """What a researcher writes first: cache every hook_post of every batch (kept on the CPU,
    as ``run_with_cache`` users do to analyse afterwards), then reduce and rank."""
    n_layers = model.cfg.n_layers
    acts, labels, where = [], [], []
    with torch.no_grad():
        for batch in data.batches(BATCH):
            _, cache = model.run_with_cache(
                batch.tokens.to(model_device(model)),
                attention_mask=batch.attention_mask.to(model_device(model)),
                names_filter=lambda name: name.endswith("mlp.hook_post"),
            )
            mask = batch.concept_labels >= 0
            stacked = torch.stack([cache[mlp_hook_name(i)] for i in range(n_layers)], 2)
            acts.append(stacked[mask.to(stacked.device)].float().cpu())  # [token, layer, neuron]
            labels.append(batch.concept_labels[mask])
            rows, cols = mask.nonzero(as_tuple=True)
            where.append(torch.stack([batch.sentence_index[rows], cols, batch.tokens[mask]], 1))
    return _rank_from_cache(torch.cat(acts), torch.cat(labels), torch.cat(where), data)


def _rank_from_cache(acts, labels, where, data: ConceptDataset) -> Ranking:
    one_hot = torch.nn.functional.one_hot(labels, len(data.label_names)).double()
    wide = acts.double()
    total = torch.einsum("tz,tln->zln", one_hot, wide)
    total_sq = torch.einsum("tz,tln->zln", one_hot, wide.square())
    values, index = acts.topk(min(20, len(acts)), dim=0)  # [k, layer, neuron]
    index = index.permute(1, 2, 0)
    stats = NeuronStats(
        data.label_names, one_hot.sum(0).long(), total, total_sq, values.permute(1, 2, 0),
        where[:, 0][index], where[:, 1][index], where[:, 2][index], labels[index],
    )  # fmt: skip
    return Ranking.from_stats(stats, "LOC", "probeless")


def neurox_way(model: Any, data: ConceptDataset) -> list[int] | None:
    """NeuroX's pipeline on the same neurons: per-sentence [layer, token, neuron] activations
    in its hdf5 format, read back by ``neurox.data.loader.load_activations``, flattened by
    ``create_tensors`` and ranked by ``probeless.get_neuron_ordering``. NeuroX's own extractor
    reads hidden states, not MLP neurons, so the extraction writes its format itself."""
    try:
        import h5py
        import neurox.data.loader as loader
        import neurox.interpretation.probeless as probeless
        import neurox.interpretation.utils as utils
    except ImportError:
        return None
    import numpy as np

    if not hasattr(np, "int"):
        np.int = int  # NeuroX 1.0.9 uses the alias numpy 1.24 removed
    n_layers = model.cfg.n_layers
    tokens: dict[str, list] = {"source": [], "target": []}
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "activations.hdf5")
        with h5py.File(path, "w") as file, torch.no_grad():
            index = {}
            for batch in data.batches(BATCH):
                _, cache = model.run_with_cache(
                    batch.tokens.to(model_device(model)),
                    attention_mask=batch.attention_mask.to(model_device(model)),
                    names_filter=lambda name: name.endswith("mlp.hook_post"),
                )
                stacked = torch.stack([cache[mlp_hook_name(i)] for i in range(n_layers)], 1)
                for row, sentence in enumerate(batch.sentence_index.tolist()):
                    keep = batch.concept_labels[row] >= 0
                    kept = stacked[row][:, keep.to(stacked.device)].float().cpu().numpy()
                    file.create_dataset(str(sentence), data=kept)
                    index[str(sentence)] = str(sentence)
                    ids = batch.tokens[row][keep].tolist()
                    tokens["source"].append([str(i) for i in ids])
                    tokens["target"].append(
                        [data.label_names[int(z)] for z in batch.concept_labels[row][keep]]
                    )
            file.create_dataset("sentence_to_index", data=[json.dumps(index)])
        activations, _ = loader.load_activations(path)
    x, y, mapping = utils.create_tensors(tokens, activations, "O")
    return probeless.get_neuron_ordering(x, y)


def section_corpus() -> dict:
    from neuroplastic.data.synthetic import generate_corpus

    seconds = []
    for _ in range(2):  # the first call also builds the name lists it samples from
        start = time.perf_counter()
        corpus = generate_corpus()
        seconds.append(time.perf_counter() - start)
    n = len(corpus.train) + len(corpus.validation)
    return {"sentences": n, "seconds_cold": seconds[0], "seconds_warm": seconds[1]}


def section_probe(model: Any, data: ConceptDataset, device: torch.device) -> dict:
    """A stage end's statistics pass and per-layer probes: with passes of their own (as before
    the taps) and read off the statistics pass by a residual tap (as a run takes them now: the
    held-out tokens ride on the evaluation, which runs anyway; here the probes are scored on
    the sentences they were fitted on, the probes' cost, not their accuracy)."""
    from neuroplastic.core.probes import ResidualTap, probe_auc, probe_auc_of

    layers = list(range(int(model.cfg.n_layers)))
    concept_id = data.label_id("LOC")

    def stats_then_own_probes() -> dict[int, float]:
        stats_pass(model, data)
        return probe_auc(model, data, data, "LOC", layers, batch_size=BATCH)

    def stats_with_tap_then_fit() -> dict[int, float]:
        tap = ResidualTap(layers, len(data))
        collect_stats(model, data, batch_size=BATCH, top_k=20, progress=False, taps=[tap])
        kept = tap.residuals()
        return probe_auc_of(kept, kept, concept_id)

    own, tapped = stats_then_own_probes(), stats_with_tap_then_fit()

    times = interleaved(
        {
            "stats": lambda: stats_pass(model, data),
            "stats_then_own_probes": stats_then_own_probes,
            "stats_with_tap_then_fit": stats_with_tap_then_fit,
        },
        device,
    )
    return {
        "seconds": times,
        "own_probes_over_stats": times["stats_then_own_probes"] / times["stats"],
        "tapped_probes_over_stats": times["stats_with_tap_then_fit"] / times["stats"],
        "largest_auc_difference": max(abs(own[layer] - tapped[layer]) for layer in layers),
    }


def section_stats(model: Any, data: ConceptDataset, device: torch.device) -> dict:
    tokens = n_tokens(data)
    passes = {
        "floor": lambda: floor_pass(model, data),
        "stats": lambda: stats_pass(model, data),
        "cache_then_rank": lambda: cache_then_rank(model, data),
    }
    if device.type != "cpu":  # the top-k merge the CPU uses, with its host synchronisations
        passes["stats_sparse_merge"] = lambda: stats_pass(model, data, merge="sparse")
    times = interleaved(passes, device)
    result = {
        "tokens": tokens,
        "seconds": times,
        "stats_over_floor": times["stats"] / times["floor"],
        "cache_over_stats": times["cache_then_rank"] / times["stats"],
        "stats_tokens_per_s": tokens / times["stats"],
    }
    if "stats_sparse_merge" in times:
        result["sparse_merge_over_floor"] = times["stats_sparse_merge"] / times["floor"]
    if device.type == "cpu" and neurox_way(model, dataset_of(model, 8)) is not None:
        seconds = timed(lambda: neurox_way(model, data), device, repeats=1)
        result["seconds"]["neurox"] = seconds
        result["neurox_over_stats"] = seconds / times["stats"]
    return result


def stats_pass_every_batch(model: Any, data: ConceptDataset) -> NeuronStats:
    """The statistics pass with the sparse top-k merge made at every batch (as before the
    merges of several batches were folded into one)."""
    original = stats_module._TopK.__init__

    def every_batch(self, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **{**kwargs, "fold": 0})

    return sparse_pass_with(model, data, stats_module._TopK, "__init__", every_batch)


def sparse_pass_with(model: Any, data: ConceptDataset, owner: Any, name: str, stand_in: Any):
    """The statistics pass (sparse merge) with ``owner.name`` replaced by the way before."""
    with patch.object(owner, name, stand_in):
        return stats_pass(model, data, merge="sparse")


def same_statistics(a: NeuronStats, b: NeuronStats, names: tuple[str, ...]) -> bool:
    return all(torch.equal(getattr(a, name), getattr(b, name)) for name in names)


def _beside_floor(
    model: Any, data: ConceptDataset, device: torch.device, passes: dict[str, Any], same: bool
) -> dict:
    """Two statistics passes (name -> (the pass, its ratio's key)) and the floor in one
    interleaved measurement, each pass as a ratio to the floor."""
    times = interleaved(
        {"floor": lambda: floor_pass(model, data)}
        | {name: run for name, (run, _) in passes.items()},
        device,
    )
    return {
        "tokens": n_tokens(data),
        "seconds": times,
        **{ratio: times[name] / times["floor"] for name, (_, ratio) in passes.items()},
        "same_statistics": same,
    }


def section_fold(model: Any, data: ConceptDataset, device: torch.device) -> dict:
    """The sparse top-k merge folded over several batches against made at every batch, each
    beside the floor, in one interleaved measurement; the two give the same statistics."""
    folded, every = stats_pass(model, data, merge="sparse"), stats_pass_every_batch(model, data)
    same = same_statistics(folded, every, ("top_values", "top_sentence"))
    passes = {
        "stats_folded": (lambda: stats_pass(model, data, merge="sparse"), "folded_over_floor"),
        "stats_every_batch": (
            lambda: stats_pass_every_batch(model, data),
            "every_batch_over_floor",
        ),
    }
    return _beside_floor(model, data, device, passes, same)


def stats_pass_two_sorts(model: Any, data: ConceptDataset) -> NeuronStats:
    """The statistics pass with the merge ordering its tokens by two stable sorts (by value,
    then by neuron), as before the one-key sort."""

    def two_sorts(owner: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        order = values.argsort(descending=True, stable=True)
        return order[owner[order].argsort(stable=True)]

    return sparse_pass_with(model, data, stats_module, "largest_first_within", two_sorts)


def section_sort(model: Any, data: ConceptDataset, device: torch.device) -> dict:
    """The sparse merge's one stable sort of a (neuron, value) key against the two stable sorts
    it replaced, each beside the floor; the two give the same statistics."""
    one, two = stats_pass(model, data, merge="sparse"), stats_pass_two_sorts(model, data)
    same = same_statistics(one, two, ("top_values", "top_sentence", "top_position"))
    passes = {
        "stats_one_sort": (lambda: stats_pass(model, data, merge="sparse"), "one_sort_over_floor"),
        "stats_two_sorts": (lambda: stats_pass_two_sorts(model, data), "two_sorts_over_floor"),
    }
    return _beside_floor(model, data, device, passes, same)


def stats_pass_every_value(model: Any, data: ConceptDataset) -> NeuronStats:
    """The statistics pass with the threshold test comparing every value, as before the
    blocks' first look."""

    def every_value(acts: torch.Tensor, threshold: torch.Tensor):
        rows, neurons = (acts > threshold).nonzero(as_tuple=True)
        return rows, neurons, acts[rows, neurons]

    return sparse_pass_with(model, data, stats_module, "above_threshold", every_value)


def _pair_by_size(
    section: str,
    model: Any,
    sizes: list[int],
    device: torch.device,
    pair: dict[str, tuple[Any, str]],
    fields: tuple[str, ...],
    extra: Any = None,
) -> dict:
    """Two statistics passes (name -> (pass(data), its ratio's key)) beside the floor at each
    size, with whether they give the same ``fields``, and ``extra(first, second)``'s figures."""
    by_size = {}
    for size in sizes:
        data = dataset_of(model, size)
        first, second = (run(data) for run, _ in pair.values())
        passes = {
            name: (lambda data=data, run=run: run(data), ratio)
            for name, (run, ratio) in pair.items()
        }
        same = same_statistics(first, second, fields)
        result = _beside_floor(model, data, device, passes, same)
        by_size[str(size)] = result | (extra(first, second) if extra else {})
        print(json.dumps({section: {str(size): by_size[str(size)]}}), flush=True)
    return by_size


def section_prefilter(model: Any, sizes: list[int], device: torch.device) -> dict:
    """The threshold test with the blocks' first look against every value compared, each
    beside the floor, at each size; the two give the same statistics."""
    pair = {
        "stats_blocked": (
            lambda data: stats_pass(model, data, merge="sparse"),
            "blocked_over_floor",
        ),
        "stats_every_value": (
            lambda data: stats_pass_every_value(model, data),
            "every_value_over_floor",
        ),
    }
    fields = ("top_values", "top_sentence", "top_position", "sum", "sum_sq")
    return _pair_by_size("prefilter", model, sizes, device, pair, fields)


def section_sums(model: Any, sizes: list[int], device: torch.device) -> dict:
    """Each batch's sums per label by ``index_add_`` (each row added to its label's) against by
    matmul with the one-hot, each beside the floor, at each size; the two give the same counts
    and top-k, and sums that agree to float32 rounding (their largest relative difference is
    recorded)."""
    pair = {
        "stats_sums_by_index": (
            lambda data: stats_pass(model, data, sums="index"),
            "index_over_floor",
        ),
        "stats_sums_by_matmul": (
            lambda data: stats_pass(model, data, sums="matmul"),
            "matmul_over_floor",
        ),
    }

    def largest_difference(by_index: NeuronStats, by_matmul: NeuronStats) -> dict:
        pairs = ((by_index.sum, by_matmul.sum), (by_index.sum_sq, by_matmul.sum_sq))
        return {
            "largest_relative_sum_difference": max(
                float((a - b).abs().max() / b.abs().max()) for a, b in pairs
            )
        }

    fields = ("count", "top_values", "top_sentence")
    return _pair_by_size("sums", model, sizes, device, pair, fields, largest_difference)


def section_overlap(model: Any, data: ConceptDataset, device: torch.device) -> dict:
    """The statistics pass with each layer's reductions on a CUDA side stream against in line,
    each beside the floor, in one interleaved measurement; the two give the same statistics
    (on a CPU the side stream runs in place: the two are the same code)."""
    inline, overlapped = stats_pass(model, data), stats_pass(model, data, overlap=True)
    same = all(
        torch.equal(getattr(inline, name), getattr(overlapped, name))
        for name in ("count", "sum", "sum_sq", "top_values", "top_sentence", "top_position")
    )
    passes = {
        "stats_inline": (lambda: stats_pass(model, data), "inline_over_floor"),
        "stats_side_stream": (
            lambda: stats_pass(model, data, overlap=True),
            "side_stream_over_floor",
        ),
    }
    return _beside_floor(model, data, device, passes, same)


# -- training ----------------------------------------------------------------------------------
def section_eval(model: Any, data: ConceptDataset, device: torch.device) -> dict:
    """An evaluation (NER F1, 32 sentences a batch) with its sentences batched by length against
    batched in corpus order, side by side; the tokens each computes; the scores of the two."""
    torch.manual_seed(0)
    module = TokenClassifier(model, len(data.tag_names)).to(device)

    def by_length() -> dict:
        return evaluate(module, data, "ner", "LOC", progress=False).scores

    def in_corpus_order() -> dict:
        with patch.object(data, "by_length", lambda: list(range(len(data)))):
            return evaluate(module, data, "ner", "LOC", progress=False).scores

    same = by_length() == in_corpus_order()
    times = interleaved({"by_length": by_length, "corpus_order": in_corpus_order}, device)

    def cut(order: list[int]) -> list[list[int]]:
        return [order[i : i + 32] for i in range(0, len(order), 32)]

    computed = {
        "by_length": padding_share(cut(data.by_length()), data.lengths())[1],
        "corpus_order": padding_share(cut(list(range(len(data)))), data.lengths())[1],
    }
    return {
        "seconds": times,
        "by_length_over_corpus_order": times["by_length"] / times["corpus_order"],
        "real_tokens": n_tokens(data),
        "computed_tokens": computed,
        "same_scores": same,
    }


def section_train(model: Any, data: ConceptDataset, device: torch.device) -> dict:
    torch.manual_seed(0)
    module = TokenClassifier(model, len(data.tag_names)).to(device)
    steps = 6
    trainer = Trainer(
        module, tagging_loss, data, steps * 4 * 2 + 2, TrainConfig(batch_size=16), seed=0
    )
    # 10% of the neurons of every layer, as the default run holds.
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    chosen = torch.rand(n_layers, d_mlp, generator=torch.Generator().manual_seed(0)).argsort(1)
    neurons = NeuronSet.of(
        n_layers,
        d_mlp,
        [(layer, int(n)) for layer in range(n_layers) for n in chosen[layer][: d_mlp // 10]],
    )

    def plain():
        trainer.step = 0  # both see the same batches: the cost of a step depends on their length
        trainer.run(steps, progress=False)

    def held():
        trainer.step = 0
        with Ablation(model, neurons, permanent=True):
            trainer.run(steps, progress=False)

    times = interleaved({"plain": plain, "held": held}, device)
    tokens = sum(int(data.collate(b).attention_mask.sum()) for b in trainer.batches[:steps])
    return {
        "seconds_per_step": {k: v / steps for k, v in times.items()},
        "held_over_plain": times["held"] / times["plain"],
        "train_tokens_per_s": tokens / times["plain"],
        "held_minus_plain_by_op": _extra_ops({"plain": plain, "held": held}, device),
    }


def section_adamw(model: Any, data: ConceptDataset, device: torch.device) -> dict:
    """A training step with AdamW's fused update (one kernel over all parameters) against its
    default (``foreach`` on CUDA, one parameter at a time on a CPU), on the same batches from the
    same weights; fused is not the same arithmetic order, so the largest weight difference after
    the steps is recorded too."""
    import functools

    steps, adamw = 6, torch.optim.AdamW
    start = TokenClassifier(model, len(data.tag_names)).to(device).state_dict()
    start = {name: tensor.clone() for name, tensor in start.items()}
    module = TokenClassifier(model, len(data.tag_names)).to(device)
    trainer = Trainer(module, tagging_loss, data, steps, TrainConfig(batch_size=16), seed=0)

    def steps_from_start(**options: Any) -> dict[str, torch.Tensor]:
        module.load_state_dict(start)  # the same weights and batches every time
        with patch.object(torch.optim, "AdamW", functools.partial(adamw, **options)):
            trainer.restart_schedule()
        trainer.step = 0
        trainer.run(steps, progress=False)
        return module.state_dict()

    times = interleaved(
        {"default": steps_from_start, "fused": lambda: steps_from_start(fused=True)}, device
    )
    # state_dict() holds the live weights: copies, before the next call overwrites them
    by_default = {name: t.clone() for name, t in steps_from_start().items()}
    fused = {name: t.clone() for name, t in steps_from_start(fused=True).items()}
    module.load_state_dict(start)  # the model as it came, for the sections after this one
    return {
        "seconds_per_step": {name: value / steps for name, value in times.items()},
        "fused_over_default": times["fused"] / times["default"],
        "largest_weight_difference": max(
            float((by_default[name].float() - fused[name].float()).abs().max())
            for name in by_default
        ),
        "largest_weight_change": max(
            float((by_default[name].float() - start[name].float()).abs().max())
            for name in by_default
        ),
    }


def section_grouping(model: Any, data: ConceptDataset, device: torch.device) -> dict:
    """Training batches regrouped by length (``--group-by-length``) against drawn as they come:
    the tokens each computes over 100 steps, and the time per step over ``GROUP`` steps from
    the same weights (one group: both arms train on the same sentences, batched differently)."""
    lengths, group = data.lengths(), GROUP
    tokens = {}
    for name, size in (("plain", 0), (f"groups_of_{group}", group), ("groups_of_50", 50)):
        real, computed = padding_share(batch_order(len(data), 100, 16, 0, lengths, size), lengths)
        tokens[name] = {"real": real, "computed": computed, "real_share": real / computed}
    start = TokenClassifier(model, len(data.tag_names)).to(device).state_dict()
    start = {name: tensor.clone() for name, tensor in start.items()}
    module = TokenClassifier(model, len(data.tag_names)).to(device)

    def steps_from_start(size: int) -> None:
        module.load_state_dict(start)
        config = TrainConfig(batch_size=16, group_by_length=size)
        Trainer(module, tagging_loss, data, group, config, seed=0).run(group, progress=False)

    times = interleaved(
        {"plain": lambda: steps_from_start(0), "grouped": lambda: steps_from_start(group)}, device
    )
    module.load_state_dict(start)  # the model as it came, for the sections after this one
    return {
        "steps": group,
        "seconds_per_step": {name: value / group for name, value in times.items()},
        "grouped_over_plain": times["grouped"] / times["plain"],
        "tokens_over_100_steps": tokens,
    }


def _extra_ops(fns: dict[str, Any], device: torch.device, n: int = 8) -> dict[str, Any]:
    """Where a held step's extra time goes: the ops whose self time (device time on a GPU)
    grows most from one plain call to one held call, in ms, from torch.profiler. On a GPU an
    op's kernel time is listed under the op (``aten::mul``) and under the kernel's own name."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    totals = {}
    for name, fn in fns.items():
        with profile(activities=activities) as prof:
            fn()
            synchronize(device)
        totals[name] = {e.key: getattr(e, key) / 1000 for e in prof.key_averages()}
    names = set(totals["plain"]) | set(totals["held"])
    extra = {op: totals["held"].get(op, 0.0) - totals["plain"].get(op, 0.0) for op in names}
    top = sorted(extra.items(), key=lambda item: item[1], reverse=True)[:n]
    return {"top": [{"op": op, "extra_ms": round(ms, 3)} for op, ms in top]}


# -- memory ------------------------------------------------------------------------------------
class ResidentPeak:
    """The highest resident set size while the block runs, sampled every 2 ms from /proc (the
    process-wide ru_maxrss would keep the peak of loading the model)."""

    def __enter__(self) -> ResidentPeak:
        import threading

        self.peak = self.now()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.002):
                self.peak = max(self.peak, self.now())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(args: argparse.Namespace) -> None:
    """One measurement in this fresh process; prints a JSON line."""
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    device = model_device(model)
    data = dataset_of(model, args.sentences)
    floor_pass(model, dataset_of(model, 8))  # kernels and allocator warmed up
    run = {"stats": stats_pass, "cache": cache_then_rank}[args.memory_child]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run(model, data)
        grown = torch.cuda.max_memory_allocated(device) - before
    else:
        with ResidentPeak() as peak:
            before = ResidentPeak.now()
            run(model, data)
        grown = peak.peak - before
    print(json.dumps({"tokens": n_tokens(data), "peak_over_model_bytes": grown}))


def section_memory(args: argparse.Namespace, tokens_per_sentence: float) -> dict:
    rows = {}
    for target in (1_000, 10_000, 100_000):
        sentences = max(8, round(target / tokens_per_sentence))
        for method in ("stats", "cache"):
            command = [
                sys.executable, __file__, "--model", args.model, "--device", args.device,
                "--dtype", args.dtype, "--sentences", str(sentences), "--memory-child", method,
                "--dataset", args.dataset,
            ]  # fmt: skip
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            measured = json.loads(output.strip().splitlines()[-1])
            mib = measured["peak_over_model_bytes"] / 2**20
            rows[f"{method}@{measured['tokens']}"] = mib
            print(f"  {method:>5} {measured['tokens']:>7} tokens: {mib:.0f} MiB", flush=True)
    return {"peak_MiB_over_model": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dataset", default="embedded", help="embedded, or a CoNLL path")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--sections", default="stats,train,memory")
    parser.add_argument(
        "--sizes", default="256,1024,4096", help="sentences, for prefilter and sums"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds (the fastest counts)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--memory-child", choices=("stats", "cache"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DATASET, ROUNDS
    DATASET, ROUNDS = args.dataset, args.rounds
    if args.memory_child:
        memory_child(args)
        return
    if args.sections == "corpus":  # needs no model
        print(json.dumps({"corpus": section_corpus()}), flush=True)
        return
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    device = model_device(model)
    data = dataset_of(model, args.sentences)
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    parameters = sum(p.numel() for p in model.parameters())
    header = {
        "model": args.model,
        "parameters": parameters,
        "dtype": args.dtype,
        "machine": machine,
        "torch": torch.__version__,
        "sentences": len(data),
        "tokens": n_tokens(data),
        "rounds": ROUNDS,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(header), flush=True)
    results: dict[str, Any] = {"header": header}
    sections = args.sections.split(",")
    if "stats" in sections:
        results["stats"] = section_stats(model, data, device)
        print(json.dumps({"stats": results["stats"]}), flush=True)
    if "fold" in sections:
        results["fold"] = section_fold(model, data, device)
        print(json.dumps({"fold": results["fold"]}), flush=True)
    if "sort" in sections:
        results["sort"] = section_sort(model, data, device)
        print(json.dumps({"sort": results["sort"]}), flush=True)
    sizes = [int(size) for size in args.sizes.split(",")]
    if "prefilter" in sections:
        results["prefilter"] = section_prefilter(model, sizes, device)
    if "sums" in sections:
        results["sums"] = section_sums(model, sizes, device)
    if "overlap" in sections:
        results["overlap"] = section_overlap(model, data, device)
        print(json.dumps({"overlap": results["overlap"]}), flush=True)
    if "probe" in sections:
        results["probe"] = section_probe(model, data, device)
        print(json.dumps({"probe": results["probe"]}), flush=True)
    if "eval" in sections:
        results["eval"] = section_eval(model, data, device)
        print(json.dumps({"eval": results["eval"]}), flush=True)
    if "train" in sections:
        results["train"] = section_train(model, data, device)
        print(json.dumps({"train": results["train"]}), flush=True)
    if "adamw" in sections:
        results["adamw"] = section_adamw(model, data, device)
        print(json.dumps({"adamw": results["adamw"]}), flush=True)
    if "grouping" in sections:
        results["grouping"] = section_grouping(model, data, device)
        print(json.dumps({"grouping": results["grouping"]}), flush=True)
    if "memory" in sections:
        results["memory"] = section_memory(args, n_tokens(data) / len(data))
        print(json.dumps({"memory": results["memory"]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
