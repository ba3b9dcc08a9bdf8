"""Streaming per-neuron statistics of ``blocks.{l}.mlp.hook_post`` over a concept dataset.

One batched pass; per concept label the token count, sum and sum of squares of every neuron, and
the dataset-wide top-k activating tokens of every neuron (sentence, position, token, label). Memory
is fixed by ``n_labels x n_layers x d_mlp`` and the top-k buffers, whatever the dataset size.
Two passes over disjoint halves ``merge`` into exactly one pass over the whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from neuroplastic import distributed
from neuroplastic.core.models import (
    check_mlp_hooks,
    mlp_hook_name,
    model_device,
    resid_hook_name,
    run_forward,
)
from neuroplastic.core.streams import SideStream
from neuroplastic.data.concept import Batch, ConceptDataset
from neuroplastic.errors import NeuroplasticError
from neuroplastic.io import atomic_write_bytes
from neuroplastic.progress import progress as progress_bar

if TYPE_CHECKING:
    from neuroplastic.core.probes import ResidualTap


@dataclass
class NeuronStats:
    label_names: tuple[str, ...]
    count: Int[Tensor, " label"]
    sum: Float[Tensor, "label layer neuron"]
    sum_sq: Float[Tensor, "label layer neuron"]
    top_values: Float[Tensor, "layer neuron k"]
    top_sentence: Int[Tensor, "layer neuron k"]
    top_position: Int[Tensor, "layer neuron k"]
    top_token: Int[Tensor, "layer neuron k"]
    top_label: Int[Tensor, "layer neuron k"]

    @classmethod
    def empty(cls, label_names: Sequence[str], n_layers: int, d_mlp: int, k: int) -> NeuronStats:
        n_labels = len(label_names)
        top_shape = (n_layers, d_mlp, 0)
        del k  # buffers grow to k as tokens arrive
        return cls(
            label_names=tuple(label_names),
            count=torch.zeros(n_labels, dtype=torch.long),
            sum=torch.zeros(n_labels, n_layers, d_mlp, dtype=torch.float64),
            sum_sq=torch.zeros(n_labels, n_layers, d_mlp, dtype=torch.float64),
            top_values=torch.empty(top_shape),
            top_sentence=torch.empty(top_shape, dtype=torch.long),
            top_position=torch.empty(top_shape, dtype=torch.long),
            top_token=torch.empty(top_shape, dtype=torch.long),
            top_label=torch.empty(top_shape, dtype=torch.long),
        )

    @property
    def n_layers(self) -> int:
        return self.sum.shape[1]

    @property
    def d_mlp(self) -> int:
        return self.sum.shape[2]

    @property
    def k(self) -> int:
        return self.top_values.shape[2]

    def label_index(self, label: str) -> int:
        if label not in self.label_names:
            raise NeuroplasticError(
                f"unknown concept label {label!r}; labels present: {', '.join(self.label_names)}"
            )
        return self.label_names.index(label)

    def mean(self) -> Float[Tensor, "label layer neuron"]:
        """Mean activation per label (zero for a label with no tokens)."""
        counts = self.count.clamp(min=1).to(torch.float64)
        return self.sum / counts[:, None, None]

    def variance(self) -> Float[Tensor, "label layer neuron"]:
        counts = self.count.clamp(min=1).to(torch.float64)[:, None, None]
        return (self.sum_sq / counts - self.mean() ** 2).clamp(min=0)

    def overall_mean(self) -> Float[Tensor, "layer neuron"]:
        return self.sum.sum(0) / self.count.sum().clamp(min=1)

    def update(
        self,
        activations: Float[Tensor, "layer token neuron"],
        labels: Int[Tensor, " token"],
        sentence: Int[Tensor, " token"],
        position: Int[Tensor, " token"],
        token: Int[Tensor, " token"],
        k: int,
    ) -> None:
        """Fold in the activations of labelled tokens (already stripped of special/pad tokens)."""
        acts = activations.to(torch.float64)
        one_hot = torch.nn.functional.one_hot(labels, len(self.label_names)).to(torch.float64)
        self.count += one_hot.sum(0).long()
        self.sum += einops.einsum(
            one_hot, acts, "token label, layer token neuron -> label layer neuron"
        )
        self.sum_sq += einops.einsum(
            one_hot, acts**2, "token label, layer token neuron -> label layer neuron"
        )
        n_new = min(k, activations.shape[1])
        values, index = activations.float().topk(n_new, dim=1)  # [layer, n_new, neuron]
        index = einops.rearrange(index, "layer k neuron -> layer neuron k")
        self._merge_top(
            einops.rearrange(values, "layer k neuron -> layer neuron k"),
            sentence[index],
            position[index],
            token[index],
            labels[index],
            k,
        )

    def _merge_top(self, values, sentence, position, token, label, k: int) -> None:
        values = torch.cat([self.top_values, values], dim=2)
        kept, index = values.topk(min(k, values.shape[2]), dim=2)
        self.top_values = kept

        def pick(old: Tensor, new: Tensor) -> Tensor:
            return torch.cat([old, new], dim=2).gather(2, index)

        self.top_sentence = pick(self.top_sentence, sentence)
        self.top_position = pick(self.top_position, position)
        self.top_token = pick(self.top_token, token)
        self.top_label = pick(self.top_label, label)

    def merge(self, other: NeuronStats) -> NeuronStats:
        """Statistics of both passes together (the passes must cover disjoint sentences)."""
        if self.label_names != other.label_names or self.sum.shape != other.sum.shape:
            raise NeuroplasticError(
                "cannot merge statistics of different labels or model shapes: "
                f"{self.label_names} {tuple(self.sum.shape)} vs "
                f"{other.label_names} {tuple(other.sum.shape)}"
            )
        k = max(self.k, other.k)
        merged = NeuronStats(
            self.label_names,
            self.count + other.count,
            self.sum + other.sum,
            self.sum_sq + other.sum_sq,
            self.top_values,
            self.top_sentence,
            self.top_position,
            self.top_token,
            self.top_label,
        )
        merged._merge_top(
            other.top_values,
            other.top_sentence,
            other.top_position,
            other.top_token,
            other.top_label,
            k,
        )
        return merged

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save

        tensors = {
            f.name: getattr(self, f.name).contiguous()
            for f in fields(self)
            if f.name != "label_names"
        }
        atomic_write_bytes(
            path, save(tensors, metadata={"label_names": ",".join(self.label_names)})
        )

    @classmethod
    def load(cls, path: str | Path) -> NeuronStats:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as handle:
            label_names = tuple(handle.metadata()["label_names"].split(","))
        return cls(label_names=label_names, **load_file(str(path)))


class StatsCollector:
    """Hooks on every layer's ``mlp.hook_post`` that fold each batch into running statistics
    on the model's own device; only the finished :class:`NeuronStats` goes to the CPU.

    Each batch is reduced in float32 where it is computed and added to float64 totals (float32
    sums of a million tokens would lose about three digits). Each layer's activations are used
    inside its hook and dropped, so memory holds one layer of one batch at a time. The top-k
    buffers are kept by :class:`_TopK`. ``overlap`` (CUDA only) runs each layer's reductions on a
    side stream while the next layers compute (:class:`~neuroplastic.core.streams.SideStream`):
    the same results, bit for bit.
    """

    def __init__(
        self,
        model: Any,
        label_names: Sequence[str],
        top_k: int,
        merge: str = "auto",
        overlap: bool = False,
        sums: str = "auto",
    ) -> None:
        self.n_layers, self.d_mlp = check_mlp_hooks(model)
        self.label_names = tuple(label_names)
        self.top_k = top_k
        self.device = model_device(model)
        # float64 totals where the device has float64 (Apple's MPS has none: totals stay on the
        # CPU there, still folded once per batch).
        self.total_device = self.device if self.device.type != "mps" else torch.device("cpu")
        n_labels, shape = len(self.label_names), (self.n_layers, self.d_mlp)
        self.count = torch.zeros(n_labels, dtype=torch.long, device=self.total_device)
        self.sum = torch.zeros(n_labels, *shape, dtype=torch.float64, device=self.total_device)
        self.sum_sq = torch.zeros_like(self.sum)
        self.top = _TopK(self.n_layers, self.d_mlp, top_k, self.device, merge)
        self._sums_by_index = sums_by_index(sums, self.device)
        self.side = SideStream(self.device, enabled=overlap)
        self._batch: _BatchTokens | None = None
        self._tokens_seen = 0  # labelled tokens before the current batch (counted on the host)
        self._buffers_full = False
        self.hooks = [(mlp_hook_name(layer), self._hook(layer)) for layer in range(self.n_layers)]

    def begin(self, batch: Batch) -> None:
        """Announce the batch whose forward pass comes next."""
        self._batch = _BatchTokens.of(
            batch, len(self.label_names), self.device, self._sums_by_index
        )
        self.count += self._batch.count.to(self.total_device)
        self._buffers_full = self._tokens_seen >= self.top_k
        self._tokens_seen += len(self._batch.keep)

    def _hook(self, layer: int):
        def hook(activation: Float[Tensor, "batch pos neuron"], hook: Any) -> None:
            batch = self._batch
            if batch is None:
                raise NeuroplasticError("StatsCollector.begin(batch) must precede each forward")
            full = self._buffers_full
            self.side.run(
                lambda: self._reduce(layer, activation.detach(), batch, full),
                reads=(activation, *batch.on_device()),
            )

        return hook

    def _reduce(
        self,
        layer: int,
        activation: Float[Tensor, "batch pos neuron"],
        batch: _BatchTokens,
        full: bool,
    ) -> None:
        flat = activation.reshape(-1, self.d_mlp).to(self.device)
        acts = flat.index_select(0, batch.keep).float()  # a gather far cheaper than a mask
        self.sum[:, layer] += batch.label_sums(acts).to(self.total_device, torch.float64)
        self.top.update(layer, acts, batch.meta, full=full)
        # acts is this call's own copy, and the top-k buffers keep copies of what they take
        self.sum_sq[:, layer] += batch.label_sums(acts.square_()).to(
            self.total_device, torch.float64
        )

    def end_batch(self) -> None:
        """After a batch's forward: bounds how far the side stream may lag behind it."""
        self.side.end_batch()

    def all_reduce(self) -> None:
        """Combine the statistics of every data-parallel process (each saw its own sentences):
        counts and sums added, top-k buffers gathered and re-selected. Every rank ends with
        the statistics of all the sentences."""
        self.side.join()
        if not distributed.active():
            return
        for total in (self.count, self.sum, self.sum_sq):
            distributed.all_sum(total)
        self.top.all_gather()

    def finish(self) -> NeuronStats:
        """The statistics so far, on the CPU."""
        self.side.join()
        values, meta = self.top.result(n_tokens=int(self.count.sum()))
        cpu = torch.device("cpu")
        return NeuronStats(
            self.label_names,
            self.count.to(cpu),
            self.sum.to(cpu),
            self.sum_sq.to(cpu),
            values.to(cpu),
            *(meta[..., i].to(cpu) for i in range(4)),
        )


#: How each batch's sums per label are taken: ``auto`` (by index on a CPU, by matmul elsewhere),
#: or either one everywhere (to measure them side by side; the sums agree to float32 rounding).
LABEL_SUMS = ("auto", "index", "matmul")


def sums_by_index(sums: str, device: torch.device) -> bool:
    if sums not in LABEL_SUMS:
        raise NeuroplasticError(f"sums must be one of {', '.join(LABEL_SUMS)}; got {sums!r}")
    return sums == "index" or (sums == "auto" and device.type == "cpu")


@dataclass
class _BatchTokens:
    """The labelled tokens of one batch, flattened, on the model's device."""

    keep: Int[Tensor, " kept"]  # flat indices into batch x pos
    meta: Int[Tensor, "kept 4"]  # sentence, position, token, label
    count: Int[Tensor, " label"]  # on the host
    # Either the labels, for sums by index, or their one-hot laid out for sums by matmul.
    labels: Int[Tensor, " kept"] | None
    by_label: Float[Tensor, "label kept"] | None

    @classmethod
    def of(cls, batch: Batch, n_labels: int, device: torch.device, by_index: bool) -> _BatchTokens:
        labels = einops.rearrange(batch.concept_labels, "batch pos -> (batch pos)")
        keep = (labels >= 0).nonzero().squeeze(1)
        n_batch, n_pos = batch.tokens.shape
        positions = einops.repeat(torch.arange(n_pos), "pos -> (batch pos)", batch=n_batch)
        sentences = einops.repeat(batch.sentence_index, "batch -> (batch pos)", pos=n_pos)
        tokens = einops.rearrange(batch.tokens, "batch pos -> (batch pos)")
        meta = torch.stack([sentences, positions, tokens, labels], 1)[keep]
        kept_labels = labels[keep]
        count = torch.bincount(kept_labels, minlength=n_labels)
        if by_index:
            return cls(keep.to(device), meta.to(device), count, kept_labels.to(device), None)
        one_hot = torch.nn.functional.one_hot(kept_labels, n_labels).float()
        by_label = einops.rearrange(one_hot, "kept label -> label kept").contiguous()
        return cls(keep.to(device), meta.to(device), count, None, by_label.to(device))

    def on_device(self) -> tuple[Tensor, ...]:
        """The tensors the reductions read."""
        tensors = (self.keep, self.meta, self.labels, self.by_label)
        return tuple(tensor for tensor in tensors if tensor is not None)

    def label_sums(self, acts: Float[Tensor, "kept neuron"]) -> Float[Tensor, "label neuron"]:
        """Each label's sum of the rows of ``acts``: by matmul with the one-hot, or by adding
        each row to its label's in row order (``index_add_``). On a CPU the second takes about
        half the time of the first, a matmul whose one-hot has as few rows as there are labels
        (benchmarks/bench.py ``--sections sums``); on a GPU ``index_add_`` adds with atomics,
        in no fixed order, so the matmul stays there."""
        if self.by_label is not None:
            return self.by_label @ acts
        sums = acts.new_zeros(len(self.count), acts.shape[1])
        return sums.index_add_(0, self.labels, acts)


#: How the top-k buffers take a batch in once full: ``auto`` (sparse on a CPU, dense
#: elsewhere), or either one everywhere (to measure them side by side; the results are equal).
TOPK_MERGES = ("auto", "dense", "sparse")


def largest_first_within(
    owner: Int[Tensor, " n"], values: Float[Tensor, " n"]
) -> Int[Tensor, " n"]:
    """The order that groups ``values`` by ``owner`` (ascending) and puts each group's largest
    first, equal values in their given order: what a stable sort by value (descending) and then
    a stable sort by owner give, in one stable sort of an int64 key, 3x faster on a CPU.

    The key holds the owner in its high 32 bits and, in its low 32, the float32 value's bits
    mapped to an integer of the same order (negative floats' magnitude bits flipped), inverted
    so that larger comes first; -0.0 is made +0.0 first, so the two tie as they compare."""
    bits = (values.float() + 0.0).view(torch.int32).to(torch.int64)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # a signed integer in the float's order
    key = owner.to(torch.int64) * (1 << 32) + ((1 << 31) - 1 - ordered)
    return key.argsort(stable=True)


#: Rows per block of :func:`above_threshold`'s first look.
PREFILTER_ROWS = 8


def above_threshold(
    acts: Float[Tensor, "row neuron"], threshold: Float[Tensor, " neuron"]
) -> tuple[Int[Tensor, " hit"], Int[Tensor, " hit"], Float[Tensor, " hit"]]:
    """Row, neuron and value of every activation above its neuron's threshold, each neuron's
    in row order (what ``(acts > threshold).nonzero()`` gives, in another order across neurons).

    Once the buffers have filled, a neuron has a few such tokens in a batch of hundreds, and a
    comparison over every value costs more on a CPU than the reduction that finds them: each
    neuron's maximum over blocks of :data:`PREFILTER_ROWS` rows is taken first, and only the
    blocks whose maximum passes are compared value by value. When most blocks pass (early in the
    stream), every value is compared directly."""
    n_rows, d_mlp = acts.shape
    n_blocked = n_rows // PREFILTER_ROWS * PREFILTER_ROWS
    blocks = einops.rearrange(
        acts[:n_blocked], "(block row) neuron -> block row neuron", row=PREFILTER_ROWS
    )
    block, neuron = (blocks.amax(1) > threshold).nonzero(as_tuple=True)
    if 2 * block.numel() * PREFILTER_ROWS > n_blocked * d_mlp:
        rows, neurons = (acts > threshold).nonzero(as_tuple=True)
        return rows, neurons, acts[rows, neurons]
    in_block = blocks[block, :, neuron]  # [passing block, row]
    pair, offset = (in_block > threshold[neuron, None]).nonzero(as_tuple=True)
    tail_rows, tail_neurons = (acts[n_blocked:] > threshold).nonzero(as_tuple=True)
    tail_rows = tail_rows + n_blocked
    return (
        torch.cat([block[pair] * PREFILTER_ROWS + offset, tail_rows]),
        torch.cat([neuron[pair], tail_neurons]),
        torch.cat([in_block[pair, offset], acts[tail_rows, tail_neurons]]),
    )


class _TopK:
    """Per-neuron top-k activations and where they occurred.

    Until every buffer holds k tokens, each batch's own top-k is merged in. After that, on a
    CPU only the tokens above a neuron's current k-th value are kept (after a few batches, a
    handful per neuron), and those of several batches are merged at once through one sort
    instead of a top-k over every token. Merging late is exact: the k-th value only rises, so
    the tokens above the last merge's k-th value hold every token of the true top k, and the
    stable sort keeps the stream's order among equal values (earlier first), as merging each
    batch would. On a GPU the dense merge stays: it needs no host synchronisation, which the
    sparse one would.
    """

    def __init__(
        self,
        n_layers: int,
        d_mlp: int,
        k: int,
        device: torch.device,
        merge: str = "auto",
        fold: int | None = None,
    ) -> None:
        """``fold``: how many kept tokens of a layer wait before they are merged (default: as
        many as its buffers hold; 0 merges every batch)."""
        if merge not in TOPK_MERGES:
            raise NeuroplasticError(f"merge must be one of {', '.join(TOPK_MERGES)}; got {merge!r}")
        self.k, self.d_mlp = k, d_mlp
        self.values = torch.full((n_layers, d_mlp, k), -torch.inf, device=device)
        self.meta = torch.full((n_layers, d_mlp, k, 4), -1, dtype=torch.long, device=device)
        self._sparse = merge == "sparse" or (merge == "auto" and device.type == "cpu")
        # Per layer, the (neuron, value, meta) of tokens above the k-th value at the last merge,
        # not merged yet: merged once they are as many as the buffers hold, or when read.
        self._pending: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(n_layers)]
        self._pending_size = [0] * n_layers
        self._fold = d_mlp * k if fold is None else fold

    def update(
        self,
        layer: int,
        acts: Float[Tensor, "kept neuron"],
        meta: Int[Tensor, "kept 4"],
        full: bool,
    ) -> None:
        """Merge a batch into layer ``layer``'s buffers; ``full`` when every buffer already
        holds k real tokens."""
        if acts.shape[0] == 0:
            return
        if full and self._sparse:
            self._keep_above_threshold(layer, acts, meta)
            return
        self._merge_pending(layer)
        new_values, rows = acts.topk(min(self.k, acts.shape[0]), dim=0)  # [n_new, neuron]
        values = torch.cat([self.values[layer], new_values.T], dim=1)
        metas = torch.cat([self.meta[layer], meta[rows.T]], dim=1)
        kept, order = values.topk(self.k, dim=1)
        self.values[layer] = kept
        self.meta[layer] = metas.gather(1, einops.repeat(order, "n k -> n k 4"))

    def _keep_above_threshold(
        self, layer: int, acts: Float[Tensor, "kept neuron"], meta: Int[Tensor, "kept 4"]
    ) -> None:
        rows, neurons, values = above_threshold(acts, self.values[layer, :, -1])
        if rows.numel() == 0:
            return
        self._pending[layer].append((neurons, values, meta.index_select(0, rows)))
        self._pending_size[layer] += rows.numel()
        if self._pending_size[layer] >= self._fold:
            self._merge_pending(layer)

    def _merge_pending(self, layer: int) -> None:
        """Merge the tokens kept for ``layer`` into its buffers: one sort for all of them."""
        if not self._pending[layer]:
            return
        neurons, new_values, new_meta = (
            torch.cat(part) for part in zip(*self._pending[layer], strict=True)
        )
        self._pending[layer], self._pending_size[layer] = [], 0
        k, device = self.k, new_values.device
        owner = torch.cat([torch.arange(self.d_mlp, device=device).repeat_interleave(k), neurons])
        values = torch.cat([self.values[layer].flatten(), new_values])
        metas = torch.cat([self.meta[layer].reshape(-1, 4), new_meta])
        order = largest_first_within(owner, values)
        sorted_owner = owner[order]
        starts = torch.zeros(self.d_mlp, dtype=torch.long, device=device)
        starts[1:] = torch.bincount(sorted_owner, minlength=self.d_mlp).cumsum(0)[:-1]
        place = torch.arange(len(order), device=device) - starts[sorted_owner]
        chosen = order[place < k]  # every neuron has at least its k buffered entries
        self.values[layer] = values[chosen].view(self.d_mlp, k)
        self.meta[layer] = metas[chosen].view(self.d_mlp, k, 4)

    def merge_all(self) -> None:
        """Every kept token merged into the buffers (before they are read or gathered)."""
        for layer in range(len(self._pending)):
            self._merge_pending(layer)

    def all_gather(self) -> None:
        self.merge_all()
        values = distributed.all_gather_cat(self.values, dim=2)
        metas = distributed.all_gather_cat(self.meta, dim=2)
        self.values, order = values.topk(self.k, dim=2)
        self.meta = metas.gather(2, einops.repeat(order, "l n k -> l n k 4"))

    def result(
        self, n_tokens: int
    ) -> tuple[Float[Tensor, "layer neuron k"], Int[Tensor, "layer neuron k 4"]]:
        """Buffers cut to the ``n_tokens`` tokens seen when there were fewer than k."""
        self.merge_all()
        n = min(self.k, n_tokens)
        return self.values[..., :n].contiguous(), self.meta[:, :, :n].contiguous()


def collect_stats(
    model: Any,
    dataset: ConceptDataset,
    batch_size: int = 32,
    top_k: int = 20,
    indices: Sequence[int] | None = None,
    progress: bool = True,
    merge: str = "auto",
    overlap: bool = False,
    sums: str = "auto",
    taps: Sequence[ResidualTap] = (),
) -> NeuronStats:
    """Stream the dataset (or the sentences ``indices``) through the model with MLP hooks; the
    forward stops after the last MLP. ``merge``: see :data:`TOPK_MERGES`; ``sums``: see
    :data:`LABEL_SUMS`; ``overlap``: on a CUDA device, reduce each layer on a side stream beside
    the forward (the same results; off until measured faster, benchmarks/bench.py ``--sections
    overlap``). ``taps`` keep the residual stream of the same forwards (which then run on to the
    taps' last hook point, past the last MLP if they read the last layer), for the probes."""
    if batch_size < 1:
        raise NeuroplasticError(f"batch_size must be at least 1 sentence; got {batch_size}")
    order = list(range(len(dataset))) if indices is None else list(indices)
    outside = [i for i in order if not 0 <= i < len(dataset)]
    if indices is not None and (not order or outside):
        raise NeuroplasticError(
            f"indices name no sentence: give some of the dataset's {len(dataset)} (0 to "
            f"{len(dataset) - 1}), or None for all"
            if not order
            else f"indices {outside[:5]} are outside the dataset's {len(dataset)} sentences "
            f"(0 to {len(dataset) - 1})"
        )
    collector = StatsCollector(model, dataset.label_names, top_k, merge, overlap, sums)
    # Under a data-parallel launcher each process takes its share of the batches.
    order = distributed.shard_batches(order, batch_size)
    n_batches = (len(order) + batch_size - 1) // batch_size
    last_hook = mlp_hook_name(collector.n_layers - 1)
    if any(tap.layer_list[-1] == collector.n_layers - 1 for tap in taps):
        last_hook = resid_hook_name(collector.n_layers - 1)  # the last block's rest runs too
    tap_hooks = [hook for tap in taps for hook in tap.hooks]
    with torch.no_grad(), model.hooks(fwd_hooks=[*collector.hooks, *tap_hooks]):
        for batch in progress_bar(
            dataset.batches(batch_size, order),
            desc="neuron statistics",
            total=n_batches,
            enabled=progress,
        ):
            collector.begin(batch)
            run_forward(model, batch.tokens, batch.attention_mask, stop_at=last_hook)
            collector.end_batch()
            for tap in taps:
                tap.record(batch)
    collector.all_reduce()
    return collector.finish()
