"""Fine-tune a TransformerLens model for token classification (or causal LM) with hooks held.

The head reads the final hidden state through a hook point (:func:`head_hook_name`), so any
bridge works, encoder or decoder, and ablation hooks on ``mlp.hook_post`` act on every step.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from neuroplastic import distributed
from neuroplastic.core.metrics import entity_scores
from neuroplastic.core.models import (
    capture_into,
    head_hook_name,
    mlp_hook_name,
    model_device,
    run_forward,
)
from neuroplastic.data.concept import IGNORE_TAG, Batch, ConceptDataset
from neuroplastic.errors import NeuroplasticError
from neuroplastic.progress import progress as progress_bar

if TYPE_CHECKING:
    from neuroplastic.core.head_reading import HeadScores
    from neuroplastic.core.probes import ResidualTap


class TokenClassifier(nn.Module):
    """A linear tagging head on the model's final hidden state, trained with the model.

    The hidden state is what Hugging Face's token-classification heads read: the normalized
    final residual stream for decoders (after ``ln_final``), the last block's output for BERT
    (whose bridge's ``ln_final`` belongs to the MLM head). See :func:`head_hook_name`.
    """

    def __init__(self, model: Any, n_tags: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.model = model
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(model.cfg.d_model, n_tags)

    def forward(
        self, tokens: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"]
    ) -> Float[Tensor, "batch pos n_tags"]:
        hidden = run_forward(self.model, tokens, attention_mask, stop_at=head_hook_name(self.model))
        # The head stays float32 over a bfloat16/float16 model.
        return self.head(self.dropout(hidden.to(self.head.weight.dtype)))


@dataclass
class TrainConfig:
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    batch_size: int = 16
    warmup_fraction: float = 0.1
    max_grad_norm: float = 1.0
    #: 0: batches are consecutive draws of the shuffled epochs. N > 1: every N batches' sentences
    #: are regrouped by length (see :func:`batch_order`), so less of each batch is padding.
    group_by_length: int = 0
    #: Mixed precision: the forward pass and loss under ``torch.autocast`` to this dtype, the
    #: weights and AdamW's state staying as they are (float32), with a ``GradScaler`` for
    #: float16 (whose range loses small gradients). None: the model's own dtype throughout.
    autocast: torch.dtype | None = None


def linear_schedule(optimizer: torch.optim.Optimizer, n_steps: int, warmup_fraction: float):
    """Linear warm-up then linear decay to zero, the usual BERT fine-tuning schedule."""
    warmup = max(1, math.ceil(n_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (n_steps - step) / max(1, n_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batch_order(
    n_items: int,
    n_steps: int,
    batch_size: int,
    seed: int,
    lengths: Sequence[int] | None = None,
    group: int = 0,
) -> list[list[int]]:
    """Seeded reshuffled epochs, cut into ``n_steps`` batches; identical for identical seeds.

    With ``lengths`` and ``group`` > 1, each run of ``group`` consecutive batches is regrouped:
    their sentences sorted by length, cut into batches again and those batches shuffled
    (Hugging Face's ``group_by_length`` sorts groups of 50 batches, but runs them longest
    first). Every group trains on the same sentences as before, in batches of sentences of
    about one length, so much less of what is computed is padding; which sentences share a
    batch, and so every gradient, changes.
    """
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < n_steps * batch_size:
        epoch = list(range(n_items))
        rng.shuffle(epoch)
        order.extend(epoch)
    batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(n_steps)]
    if group <= 1 or lengths is None:
        return batches
    if len(lengths) != n_items:
        raise NeuroplasticError(f"{len(lengths)} lengths given for {n_items} sentences")
    regrouped: list[list[int]] = []
    for start in range(0, n_steps, group):
        pooled = [i for batch in batches[start : start + group] for i in batch]
        pooled.sort(key=lambda i: lengths[i])  # stable: ties stay in draw order
        pieces = [pooled[j : j + batch_size] for j in range(0, len(pooled), batch_size)]
        rng.shuffle(pieces)  # else every group would run from short sentences to long
        regrouped.extend(pieces)
    return regrouped


def padding_share(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> tuple[int, int]:
    """(real tokens, tokens computed) over ``batches``, each padded as
    :meth:`ConceptDataset.collate` pads it (to its longest sentence, rounded up to 8)."""
    real = computed = 0
    for batch in batches:
        sizes = [lengths[i] for i in batch]
        real += sum(sizes)
        computed += len(sizes) * (-(-max(sizes) // 8) * 8)
    return real, computed


def check_batch_split(batch_size: int) -> None:
    """Refuse a batch too small to give every process at least one item."""
    ranks = distributed.world_size()
    if batch_size < ranks:
        raise NeuroplasticError(
            f"--batch-size {batch_size} is smaller than the {ranks} processes sharing each "
            f"batch; give --batch-size {ranks} or more, or fewer processes"
        )


class Trainer:
    """AdamW over a fixed, seeded sequence of ``total_steps`` batches, run in pieces.

    The batch of step ``n`` and its dropout masks depend only on ``(seed, n)``: two trainers
    with one seed see identical batches in identical order with identical dropout, whatever
    neurons are held, and a trainer restored from :meth:`state_dict` continues exactly.
    ``schedule_steps`` is the length of the warm-up/decay schedule (``total_steps`` for one
    continuous schedule); :meth:`restart_schedule` begins a fresh optimizer and schedule, as
    the paper's recipe does for every retraining increment.

    Under several processes (``module`` wrapped by :func:`distributed.replicate`) each step's
    batch is still the ``batch_size`` items of ``(seed, n)``: rank r of W takes items r, r+W, ...
    of it, with dropout masks of ``(seed, n, r)``, and the wrapper averages the gradients; the
    reported loss is the mean over ranks, so every rank sees the same value and stops together.
    """

    def __init__(
        self,
        module: nn.Module,
        loss_fn: Callable[[nn.Module, Batch], Tensor],
        dataset: ConceptDataset,
        total_steps: int,
        config: TrainConfig,
        seed: int,
        schedule_steps: int | None = None,
    ) -> None:
        self.module, self.loss_fn, self.dataset = module, loss_fn, dataset
        self.config, self.seed = config, seed
        self.total_steps = total_steps
        self.schedule_steps = schedule_steps or total_steps
        check_batch_split(config.batch_size)
        self.batches = batch_order(
            len(dataset),
            total_steps,
            config.batch_size,
            seed,
            lengths=dataset.lengths(),
            group=config.group_by_length,
        )
        self.step = 0
        self.device_type = model_device(module).type
        self.scaler = torch.amp.GradScaler(
            self.device_type, enabled=config.autocast == torch.float16
        )
        self.restart_schedule()

    def restart_schedule(self) -> None:
        self.optimizer = torch.optim.AdamW(
            [p for p in self.module.parameters() if p.requires_grad],
            lr=self.config.learning_rate,
            weight_decay=self.config.weight_decay,
        )
        self.scheduler = linear_schedule(
            self.optimizer, self.schedule_steps, self.config.warmup_fraction
        )

    def run(
        self,
        n_steps: int,
        on_step: Callable[[int, float], None] | None = None,
        progress: bool = True,
        description: str = "training",
    ) -> list[float]:
        """The next ``n_steps`` steps; returns their losses. ``on_step(n, loss)`` gets the step
        number counted from the start of this call.

        A non-finite loss stops training with a NeuroplasticError before the weights are touched.
        """
        if self.step + n_steps > self.total_steps:
            raise NeuroplasticError(
                f"{description}: {n_steps} more steps would pass the {self.total_steps} planned"
            )
        self.module.train()
        device = model_device(self.module)
        losses: list[float] = []
        bar = progress_bar(range(n_steps), desc=description, total=n_steps, enabled=progress)
        ranks, rank = distributed.world_size(), distributed.rank()
        for n in bar:
            # This step's dropout masks, different on every rank (one rank: the seed of old).
            torch.manual_seed((self.seed * 1_000_003 + self.step) * ranks + rank)
            batch = self.dataset.collate(distributed.my_share(self.batches[self.step]))
            with torch.autocast(
                self.device_type,
                dtype=self.config.autocast or torch.float32,
                enabled=self.config.autocast is not None,
            ):
                loss = self.loss_fn(self.module, batch.to(device))
            reported = distributed.mean(loss)  # the same on every rank: all stop, or none
            if not torch.isfinite(reported):
                raise NeuroplasticError(
                    f"{description}: the loss became {reported.item()} at step {n + 1}; lower "
                    "the learning rate (--lr). Everything completed before this stage is kept"
                )
            self.optimizer.zero_grad(set_to_none=True)
            # (the scaler does nothing unless enabled: plain backward, clipping and step)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.config.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            with warnings.catch_warnings():
                # A step the scaler skipped (an overflow while it finds its scale) is no
                # misuse of the schedule: the schedule still counts it.
                warnings.filterwarnings(
                    "ignore", "Detected call of `lr_scheduler.step", UserWarning
                )
                self.scheduler.step()
            self.step += 1
            losses.append(reported.item())
            bar.set_postfix(loss=f"{reported.item():.4f}")
            if on_step is not None:
                on_step(n + 1, reported.item())
                self.module.train()
        self.module.eval()
        return losses

    def state_dict(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        if self.scaler.is_enabled():  # (a run in full precision has none: its files as before)
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])


def train(
    module: nn.Module,
    loss_fn: Callable[[nn.Module, Batch], Tensor],
    dataset: ConceptDataset,
    n_steps: int,
    config: TrainConfig,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = True,
    description: str = "training",
) -> list[float]:
    """``n_steps`` AdamW steps with a fresh optimizer and schedule; the loss of every step."""
    if n_steps <= 0:
        return []
    trainer = Trainer(module, loss_fn, dataset, n_steps, config, seed)
    return trainer.run(n_steps, on_step, progress, description)


def tagging_loss(module: TokenClassifier, batch: Batch) -> Tensor:
    logits = module(batch.tokens, batch.attention_mask)
    return nn.functional.cross_entropy(
        logits.flatten(0, 1), batch.tag_labels.flatten(), ignore_index=IGNORE_TAG
    )


def lm_token_losses(model: Any, batch: Batch) -> Float[Tensor, "batch pos_minus_1"]:
    """Next-token loss of every position (predicting token t+1 from tokens up to t)."""
    logits = model(batch.tokens, attention_mask=batch.attention_mask, return_type="logits")
    return nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch.tokens[:, 1:].flatten(), reduction="none"
    ).view(batch.tokens.shape[0], -1)


def lm_loss(model: Any, batch: Batch) -> Tensor:
    losses = lm_token_losses(model, batch)
    mask = batch.attention_mask[:, 1:].float()
    return (losses * mask).sum() / mask.sum()


@dataclass
class Evaluation:
    """Scores of one pass over the validation data."""

    scores: dict[str, Any]


class AblationViolation(NeuroplasticError):
    pass


def evaluate(
    module: nn.Module,
    dataset: ConceptDataset,
    task: str,
    concept: str,
    batch_size: int = 32,
    dead_neurons: Tensor | None = None,
    progress: bool = True,
    taps: Sequence[ResidualTap] = (),
    head: HeadScores | None = None,
) -> Evaluation:
    """Entity F1 per type (``ner``) or next-token loss on concept and other tokens (``lm``).

    Sentences are batched by length (:meth:`ConceptDataset.by_length`), which computes about a
    third fewer padding tokens than corpus order on the embedded validation split. Each is
    scored on its own tokens (padding is masked), so batching moves at most a float's last
    bits: entity F1 was the same to the bit on every run checked, summed lm losses move at
    about 1e-8 relative.

    ``dead_neurons`` (a ``[layer, neuron]`` mask) are checked to be exactly zero on every batch:
    a held ablation that stopped holding is a bug, and the run stops.

    ``taps`` keep the residual stream of the same forwards, for the probes (the forward reaches
    every block's ``hook_resid_post``: the tagging head reads the last). ``head`` keeps the
    tagging head's own score for the concept from the same logits (``ner`` only).
    """
    model = module.model if isinstance(module, TokenClassifier) else module
    captured: dict[int, Tensor] = {}
    hooks = []
    if dead_neurons is not None:
        for layer in dead_neurons.any(-1).nonzero().flatten().tolist():
            hooks.append((mlp_hook_name(layer), capture_into(captured, layer)))
    hooks += [hook for tap in taps for hook in tap.hooks]
    true_tags: list[list[str]] = []
    predicted_tags: list[list[str]] = []
    lm_sums = {"concept": 0.0, "other": 0.0}
    lm_counts = {"concept": 0, "other": 0}
    concept_id = dataset.label_id(concept)
    module.eval()
    n_batches = (len(dataset) + batch_size - 1) // batch_size
    order = dataset.by_length()  # the tag lists fill in this order
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for batch in progress_bar(
            dataset.batches(batch_size, order=order),
            desc="evaluating",
            total=n_batches,
            enabled=progress,
        ):
            if task == "ner":
                logits = module(batch.tokens, batch.attention_mask)
                _collect_tags(dataset, batch, logits.argmax(-1).cpu(), true_tags, predicted_tags)
                if head is not None:
                    head.record(batch, logits)
            else:
                losses = lm_token_losses(model, batch.to(model_device(model))).cpu()
                target_labels = batch.concept_labels[:, 1:]
                valid = batch.attention_mask[:, 1:].bool() & (target_labels >= 0)
                for name, selector in (
                    ("concept", target_labels == concept_id),
                    ("other", target_labels != concept_id),
                ):
                    chosen = valid & selector
                    lm_sums[name] += float(losses[chosen].sum())
                    lm_counts[name] += int(chosen.sum())
            for tap in taps:
                tap.record(batch)
            if dead_neurons is not None:
                _check_dead(captured, dead_neurons, batch)
            captured.clear()
    if task == "ner":
        entity_types = [name for name in dataset.label_names if name != "O"]
        in_corpus_order = sorted(range(len(order)), key=order.__getitem__)
        scores: dict[str, Any] = entity_scores(
            [true_tags[i] for i in in_corpus_order],
            [predicted_tags[i] for i in in_corpus_order],
            entity_types,
        )
    else:
        scores = {"lm_loss": {k: lm_sums[k] / max(lm_counts[k], 1) for k in lm_sums}}
    return Evaluation(scores)


def mean_loss(
    module: nn.Module,
    loss_fn: Callable[[nn.Module, Batch], Tensor],
    dataset: ConceptDataset,
    batch_size: int = 32,
) -> float:
    """The training loss over ``dataset`` in eval mode (no dropout), weighted by batch size."""
    module.eval()
    device = model_device(module)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in dataset.batches(batch_size):
            n = batch.tokens.shape[0]
            total += float(loss_fn(module, batch.to(device))) * n
            count += n
    return total / max(count, 1)


def _check_dead(captured: dict[int, Tensor], dead: Tensor, batch: Batch) -> None:
    for layer, activation in captured.items():
        mask = dead[layer].to(activation.device)
        if mask.any():
            values = activation[batch.attention_mask.to(activation.device).bool()][:, mask]
            if values.abs().max() != 0:
                raise AblationViolation(
                    f"ablated neurons of layer {layer} are not zero (max |activation| "
                    f"{float(values.abs().max()):.3g}): the ablation hooks stopped holding. "
                    "Something removed them (model.reset_hooks(including_permanent=True)?)"
                )


def _collect_tags(
    dataset: ConceptDataset,
    batch: Batch,
    predictions: Tensor,
    true_tags: list[list[str]],
    predicted_tags: list[list[str]],
) -> None:
    """Word-level tags from each word's first subtoken; words cut by truncation are left out."""
    for row, sentence_index in enumerate(batch.sentence_index.tolist()):
        first = batch.tag_labels[row] != IGNORE_TAG
        words = batch.word_ids[row][first].tolist()
        sentence = dataset.sentences[sentence_index]
        true_tags.append([sentence.tags[w] for w in words])
        predicted_tags.append([dataset.tag_names[int(t)] for t in predictions[row][first]])
