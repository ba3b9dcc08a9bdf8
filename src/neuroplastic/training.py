"""Fine-tune a TransformerLens model for token classification (or causal LM) with hooks held.

The head reads the final residual stream (``blocks.{last}.hook_resid_post``), so any bridge
works, encoder or decoder, and ablation hooks on ``mlp.hook_post`` act on every step.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from neuroplastic.data.concept import IGNORE_TAG, Batch, ConceptDataset
from neuroplastic.errors import NeuroplasticError
from neuroplastic.metrics import entity_scores
from neuroplastic.models import model_device, resid_post_name, run_forward
from neuroplastic.stats import NeuronStats, StatsCollector


class TokenClassifier(nn.Module):
    """A linear tagging head on the model's final residual stream, trained with the model."""

    def __init__(self, model: Any, n_tags: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.model = model
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(model.cfg.d_model, n_tags)

    def forward(
        self, tokens: Int[Tensor, "batch pos"], attention_mask: Int[Tensor, "batch pos"]
    ) -> Float[Tensor, "batch pos n_tags"]:
        resid = run_forward(self.model, tokens, attention_mask, stop_at=resid_post_name(self.model))
        return self.head(self.dropout(resid))


@dataclass
class TrainConfig:
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    batch_size: int = 16
    warmup_fraction: float = 0.1
    max_grad_norm: float = 1.0


def linear_schedule(optimizer: torch.optim.Optimizer, n_steps: int, warmup_fraction: float):
    """Linear warm-up then linear decay to zero, the usual BERT fine-tuning schedule."""
    warmup = max(1, math.ceil(n_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (n_steps - step) / max(1, n_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batch_order(n_items: int, n_steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """Seeded reshuffled epochs, cut into ``n_steps`` batches; identical for identical seeds."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < n_steps * batch_size:
        epoch = list(range(n_items))
        rng.shuffle(epoch)
        order.extend(epoch)
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(n_steps)]


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
    """``n_steps`` AdamW steps with a fresh optimizer; returns the loss of every step.

    A non-finite loss stops training with a NeuroplasticError before the weights are touched.
    """
    if n_steps <= 0:
        return []
    torch.manual_seed(seed)  # dropout masks: a resumed stage replays exactly
    optimizer = torch.optim.AdamW(
        [p for p in module.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    scheduler = linear_schedule(optimizer, n_steps, config.warmup_fraction)
    module.train()
    device = model_device(module)
    losses: list[float] = []
    bar = tqdm(
        batch_order(len(dataset), n_steps, config.batch_size, seed),
        desc=description,
        disable=not progress,
        leave=False,
    )
    for step, indices in enumerate(bar):
        loss = loss_fn(module, dataset.collate(indices).to(device))
        if not torch.isfinite(loss):
            raise NeuroplasticError(
                f"{description}: the loss became {loss.item()} at step {step + 1}; lower the "
                "learning rate (--lr). Everything completed before this stage is kept"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(module.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if on_step is not None:
            on_step(step + 1, loss.item())
    module.eval()
    return losses


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
    """Scores of one pass over the validation data, plus neuron statistics from the same pass."""

    scores: dict[str, Any]
    stats: NeuronStats | None


class AblationViolation(NeuroplasticError):
    pass


def evaluate(
    module: nn.Module,
    dataset: ConceptDataset,
    task: str,
    concept: str,
    batch_size: int = 32,
    stats_top_k: int | None = 20,
    dead_neurons: Tensor | None = None,
    progress: bool = True,
) -> Evaluation:
    """Evaluate, and in the same forward passes collect neuron statistics (one pass, not two).

    ``dead_neurons`` (a ``[layer, neuron]`` mask) are checked to be exactly zero on every batch:
    a held ablation that stopped holding is a bug, and the run stops.
    """
    model = module.model if isinstance(module, TokenClassifier) else module
    collector = StatsCollector(model, dataset.label_names, stats_top_k or 1)
    # Hooks only when something reads them: statistics, or the check that ablations hold.
    hooks = collector.hooks if stats_top_k or dead_neurons is not None else []
    true_tags: list[list[str]] = []
    predicted_tags: list[list[str]] = []
    lm_sums = {"concept": 0.0, "other": 0.0}
    lm_counts = {"concept": 0, "other": 0}
    concept_id = dataset.label_id(concept)
    module.eval()
    n_batches = (len(dataset) + batch_size - 1) // batch_size
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for batch in tqdm(
            dataset.batches(batch_size),
            total=n_batches,
            desc="evaluating",
            disable=not progress,
            leave=False,
        ):
            if task == "ner":
                predictions = module(batch.tokens, batch.attention_mask).argmax(-1).cpu()
                _collect_tags(dataset, batch, predictions, true_tags, predicted_tags)
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
            if dead_neurons is not None:
                _check_dead(collector.captured, dead_neurons, batch)
            if stats_top_k:
                collector.consume(batch)
            collector.captured.clear()
    if task == "ner":
        entity_types = [name for name in dataset.label_names if name != "O"]
        scores: dict[str, Any] = entity_scores(true_tags, predicted_tags, entity_types)
    else:
        scores = {"lm_loss": {k: lm_sums[k] / max(lm_counts[k], 1) for k in lm_sums}}
    return Evaluation(scores, collector.stats if stats_top_k else None)


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
