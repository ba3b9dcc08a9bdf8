"""Tokenize word-level NER sentences for a model and align every model token to its word.

Two label views come out of one alignment:

- ``concept_labels``: the entity type (``O``, ``LOC``, ...) of the word a token belongs to, on
  *every* subtoken, so neuron statistics see a whole name. Special tokens and padding get ``-1``.
- ``tag_labels``: the word's IOB2 tag on its *first* subtoken only, ``-100`` elsewhere, the usual
  token-classification training target.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace

import torch
from jaxtyping import Int
from torch import Tensor

from neuroplastic.data.types import NerSentence
from neuroplastic.errors import NeuroplasticError

IGNORE_CONCEPT = -1
IGNORE_TAG = -100


@dataclass
class EncodedSentence:
    token_ids: list[int]
    word_ids: list[int]  # -1 for special tokens
    concept_labels: list[int]
    tag_labels: list[int]


@dataclass
class Batch:
    """A padded batch; ``sentence_index`` says which dataset rows it holds."""

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    concept_labels: Int[Tensor, "batch pos"]
    tag_labels: Int[Tensor, "batch pos"]
    word_ids: Int[Tensor, "batch pos"]
    sentence_index: Int[Tensor, " batch"]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(getattr(self, f.name).to(device) for f in fields(self)))


class ConceptDataset:
    """Sentences tokenized for one tokenizer, with per-token concept and tag labels."""

    def __init__(
        self,
        sentences: Sequence[NerSentence],
        tokenizer,
        label_names: Sequence[str],
        tag_names: Sequence[str],
        max_length: int = 128,
    ) -> None:
        if not sentences:
            raise NeuroplasticError("the dataset has no sentences")
        self.sentences = list(sentences)
        self.label_names = tuple(label_names)
        self.tag_names = tuple(tag_names)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = _pad_id(tokenizer)
        label_id = {name: i for i, name in enumerate(self.label_names)}
        tag_id = {name: i for i, name in enumerate(self.tag_names)}
        prepend_bos = _needs_bos(tokenizer)
        prefix_space = _needs_prefix_space(tokenizer)
        if max_length < 4:
            raise NeuroplasticError(f"max_length must be at least 4 tokens; got {max_length}")
        self.encoded = [
            _encode(s, tokenizer, label_id, tag_id, max_length, prepend_bos, prefix_space)
            for s in self.sentences
        ]

    @property
    def n_truncated(self) -> int:
        """Sentences whose last words fell past ``max_length`` tokens (left out everywhere)."""
        return sum(
            1
            for sentence, enc in zip(self.sentences, self.encoded, strict=True)
            if max(enc.word_ids, default=-1) < len(sentence.words) - 1
        )

    def __len__(self) -> int:
        return len(self.sentences)

    def subset(self, indices: Sequence[int]) -> ConceptDataset:
        """The sentences ``indices`` (in that order), encoded as here: nothing is re-tokenized.
        Sentence indices in its batches are the subset's own (0 .. len - 1)."""
        chosen = list(indices)
        if not chosen or min(chosen) < 0 or max(chosen) >= len(self):
            raise NeuroplasticError(
                f"a subset needs indices in 0..{len(self) - 1}; got {len(chosen)} indices"
            )
        subset = copy.copy(self)
        subset.sentences = [self.sentences[i] for i in chosen]
        subset.encoded = [self.encoded[i] for i in chosen]
        return subset

    def predicting(self) -> ConceptDataset:
        """The same sentences with each token's concept label replaced by the *next* token's
        (the last token's by -1): a causal LM's loss on a concept token is computed at the
        position before it, so that is where statistics, rankings and erasers that serve
        ``--task lm`` must look. Tokens, tags and word alignment are unchanged."""
        shifted = copy.copy(self)
        shifted.encoded = [
            replace(enc, concept_labels=enc.concept_labels[1:] + [IGNORE_CONCEPT])
            for enc in self.encoded
        ]
        return shifted

    def label_id(self, label: str) -> int:
        if label not in self.label_names:
            raise NeuroplasticError(
                f"unknown concept label {label!r}; labels present: {', '.join(self.label_names)}"
            )
        return self.label_names.index(label)

    def token_strings(self, index: int) -> list[str]:
        """Readable model tokens of one sentence (as the tokenizer spells them)."""
        return [self.tokenizer.decode([t]) for t in self.encoded[index].token_ids]

    def label_counts(self) -> dict[str, int]:
        counts = torch.zeros(len(self.label_names), dtype=torch.long)
        for enc in self.encoded:
            labels = torch.tensor(enc.concept_labels)
            counts += torch.bincount(labels[labels >= 0], minlength=len(self.label_names))
        return dict(zip(self.label_names, counts.tolist(), strict=True))

    def batches(self, batch_size: int, order: Sequence[int] | None = None) -> Iterator[Batch]:
        indices = list(range(len(self))) if order is None else list(order)
        for start in range(0, len(indices), batch_size):
            yield self.collate(indices[start : start + batch_size])

    def lengths(self) -> list[int]:
        """Every sentence's length in model tokens (what a batch of it computes, unpadded)."""
        return [len(enc.token_ids) for enc in self.encoded]

    def by_length(self) -> list[int]:
        """Every sentence's index, shortest first (ties in corpus order): batches cut from this
        order hold sentences of about one length, so little of each is padding."""
        return sorted(range(len(self)), key=lambda i: len(self.encoded[i].token_ids))

    def collate(self, indices: Sequence[int]) -> Batch:
        rows = [self.encoded[i] for i in indices]
        # Round the width up to a multiple of 8: few distinct shapes let CPU kernels (oneDNN)
        # reuse their cached plans; a new shape every batch made steps several times slower.
        width = -(-max(len(r.token_ids) for r in rows) // 8) * 8

        def pad(values: list[list[int]], fill: int) -> Tensor:
            return torch.tensor([v + [fill] * (width - len(v)) for v in values], dtype=torch.long)

        return Batch(
            tokens=pad([r.token_ids for r in rows], self.pad_id),
            attention_mask=pad([[1] * len(r.token_ids) for r in rows], 0),
            concept_labels=pad([r.concept_labels for r in rows], IGNORE_CONCEPT),
            tag_labels=pad([r.tag_labels for r in rows], IGNORE_TAG),
            word_ids=pad([r.word_ids for r in rows], -1),
            sentence_index=torch.tensor(list(indices), dtype=torch.long),
        )


def predicting_labels(labels: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos"]:
    """A batch's concept labels moved one position left (the last column -1): each position
    labelled by the token it predicts, as :meth:`ConceptDataset.predicting` labels them."""
    shifted = torch.full_like(labels, IGNORE_CONCEPT)
    shifted[:, :-1] = labels[:, 1:]
    return shifted


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def _encode(
    sentence: NerSentence,
    tokenizer,
    label_id: dict[str, int],
    tag_id: dict[str, int],
    max_length: int,
    prepend_bos: bool,
    prefix_space: bool = False,
) -> EncodedSentence:
    """Align tokens to words through character offsets, which works for WordPiece and BPE alike.

    With ``prefix_space`` the text starts with a space, so the first word is tokenized as every
    other word is (see :func:`_needs_prefix_space`).
    """
    text = " ".join(sentence.words)
    position = 0
    if prefix_space:
        text = " " + text
        position = 1
    spans: list[tuple[int, int]] = []
    for word in sentence.words:
        spans.append((position, position + len(word)))
        position += len(word) + 1
    encoding = tokenizer(
        text,
        return_offsets_mapping=True,
        add_special_tokens=True,
        truncation=True,
        max_length=max_length,
    )
    token_ids = list(encoding["input_ids"])
    offsets = list(encoding["offset_mapping"])
    if prepend_bos:
        token_ids = [tokenizer.bos_token_id] + token_ids[: max_length - 1]
        offsets = [(0, 0)] + offsets[: max_length - 1]

    word_ids: list[int] = []
    word_index = 0
    for start, end in offsets:
        if end <= start:
            word_ids.append(-1)
            continue
        # Byte-level BPE offsets may include the leading space: align by the first real character.
        while start < end and text[start] == " ":
            start += 1
        while word_index < len(spans) and spans[word_index][1] <= start:
            word_index += 1
        inside = word_index < len(spans) and spans[word_index][0] <= start
        word_ids.append(word_index if inside else -1)

    entity = sentence.entity_labels
    concept_labels = [label_id[entity[w]] if w >= 0 else IGNORE_CONCEPT for w in word_ids]
    tag_labels: list[int] = []
    previous = -1
    for w in word_ids:
        tag_labels.append(tag_id[sentence.tags[w]] if w >= 0 and w != previous else IGNORE_TAG)
        if w >= 0:
            previous = w
    return EncodedSentence(token_ids, word_ids, concept_labels, tag_labels)


def _needs_prefix_space(tokenizer) -> bool:
    """Whether words must be given a leading space to be tokenized alike wherever they stand.

    Byte-level BPE (GPT-2, RoBERTa) folds the space before a word into its first token: ``"Paris"``
    at the start of a text becomes ``P|aris`` but ``" Paris"`` mid-sentence ``ĠParis``. A name
    would then look different to the model, and carry other neuron statistics, only because it
    opens the sentence. Hugging Face's token-classification recipe sets ``add_prefix_space=True``
    for these tokenizers; adding the space to the text does the same for any tokenizer instance.

    The test is the property itself rather than a class name or a ``pre_tokenizer`` attribute
    (which slow tokenizers lack and wrappers may hide): a word at the start of ``"a a"`` must get
    the same tokens as the one after the space. WordPiece (BERT) splits on whitespace, and
    SentencePiece tokenizers (T5, Llama) add their word marker to the first word themselves; both
    pass, and keep their text unchanged. A byte-level BPE tokenizer already set to
    ``add_prefix_space=True`` passes too. Only when the bare text fails and a leading space mends
    it is the space added.
    """

    def halves_match(text: str) -> bool:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        half = len(ids) // 2
        return len(ids) % 2 == 0 and ids[:half] == ids[half:]

    return not halves_match("a a") and halves_match(" a a")


def _needs_bos(tokenizer) -> bool:
    """Decoders (GPT-2) add no special token; a leading BOS keeps position 0 from being the
    attention sink of a real word, as TransformerLens does by default."""
    if getattr(tokenizer, "bos_token_id", None) is None:
        return False
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(probe) == len(bare)
