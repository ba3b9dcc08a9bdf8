import copy

import pytest

from neuroplastic.data.concept import (
    IGNORE_CONCEPT,
    IGNORE_TAG,
    ConceptDataset,
    _needs_prefix_space,
)
from neuroplastic.data.conll import read_conll, read_conll_file
from neuroplastic.data.hf import from_hf_dataset
from neuroplastic.data.load import concept_labels, encode_split, load_corpus
from neuroplastic.data.overlap import entity_mentions, mention_overlap
from neuroplastic.data.types import NerCorpus, NerSentence, iob1_to_iob2
from neuroplastic.errors import NeuroplasticError

CONLL_4COL_IOB1 = """-DOCSTART- -X- -X- O

EU NNP B-NP I-ORG
rejects VBZ B-VP O
German JJ B-NP I-MISC
call NN I-NP O
. . O O

Peter NNP B-NP I-PER
Blackburn NNP I-NP I-PER
went VBD B-VP O
to TO B-PP O
New NNP B-NP I-LOC
York NNP I-NP I-LOC
. . O O
"""


def test_iob1_becomes_iob2():
    assert iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == [
        "B-PER",
        "I-PER",
        "O",
        "B-LOC",
        "B-LOC",
        "B-ORG",
    ]
    assert iob1_to_iob2(["B-LOC", "I-LOC", "O"]) == ["B-LOC", "I-LOC", "O"]


def test_read_4_column_conll_with_docstart(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(CONLL_4COL_IOB1)
    sentences = read_conll_file(path)
    assert [s.words for s in sentences] == [
        ("EU", "rejects", "German", "call", "."),
        ("Peter", "Blackburn", "went", "to", "New", "York", "."),
    ]
    assert sentences[1].tags == ("B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O")
    assert sentences[0].entity_labels == ("ORG", "O", "MISC", "O", "O")


def test_read_2_column_directory(tmp_path):
    (tmp_path / "train.txt").write_text("Paris B-LOC\nis O\nbig O\n\nAnn B-PER\n")
    (tmp_path / "dev.txt").write_text("Rome B-LOC\n")
    corpus = read_conll(tmp_path)
    assert len(corpus.train) == 2 and corpus.validation[0].words == ("Rome",)
    assert corpus.entity_types == ("LOC", "PER")


def test_single_file_is_split(tmp_path):
    path = tmp_path / "all.conll"
    path.write_text("\n\n".join(f"w{i} O\nParis B-LOC" for i in range(20)))
    corpus = read_conll(path)
    assert (len(corpus.train), len(corpus.validation)) == (17, 3)


@pytest.mark.parametrize(
    "text, message",
    [
        ("Paris B-LOC\nis O extra\n", "line 2"),
        ("Paris LOCATION\n", "line 1"),
        ("", "no sentences"),
        ("Paris B-LOC\nis NN B-VP O\n", "line 2"),
    ],
)
def test_malformed_conll_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(NeuroplasticError, match=message) as info:
        read_conll_file(path)
    assert str(path) in str(info.value)


def test_missing_paths(tmp_path):
    with pytest.raises(NeuroplasticError, match="not found"):
        load_corpus(str(tmp_path / "nope.txt"))
    with pytest.raises(NeuroplasticError, match="no training file"):
        read_conll(tmp_path)


def test_hf_dataset_with_classlabel_names():
    datasets = pytest.importorskip("datasets")
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    split = datasets.Dataset.from_dict(
        {"tokens": [["Ann", "lives", "in", "New", "York"]], "ner_tags": [[1, 0, 0, 5, 6]]},
        features=features,
    )
    corpus = from_hf_dataset(datasets.DatasetDict(train=split, validation=split), name="toy")
    assert corpus.train[0].tags == ("B-PER", "O", "O", "B-LOC", "I-LOC")
    with pytest.raises(NeuroplasticError, match="validation split"):
        from_hf_dataset(datasets.DatasetDict(train=split))


SENTENCE = NerSentence(
    ("Ann", "Okonkwo-Smith", "flew", "to", "Kuala", "Lumpur", "."),
    ("B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O"),
)


@pytest.mark.parametrize("model_fixture", ["tiny_gpt2", "tiny_bert"])
def test_alignment_maps_every_subtoken_to_its_word(request, model_fixture):
    tokenizer = request.getfixturevalue(model_fixture).tokenizer
    labels = ("O", "LOC", "PER")
    tags = ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")
    dataset = ConceptDataset([SENTENCE], tokenizer, labels, tags)
    encoded = dataset.encoded[0]
    # Reassemble each word from its subtokens: alignment is right iff they spell the word.
    for word_index, word in enumerate(SENTENCE.words):
        pieces = [
            t for t, w in zip(encoded.token_ids, encoded.word_ids, strict=True) if w == word_index
        ]
        assert pieces, f"word {word!r} has no tokens"
        spelled = tokenizer.decode(pieces).replace(" ", "").replace("##", "")
        assert spelled.lower() == word.lower()
    specials = [i for i, w in enumerate(encoded.word_ids) if w == -1]
    assert all(encoded.concept_labels[i] == IGNORE_CONCEPT for i in specials)
    assert len(specials) == (2 if model_fixture == "tiny_bert" else 1)  # [CLS][SEP] or BOS
    # Concept labels on every subtoken; IOB2 tag ids on first subtokens only.
    expected_concept = [
        labels.index(SENTENCE.entity_labels[w]) if w >= 0 else IGNORE_CONCEPT
        for w in encoded.word_ids
    ]
    assert encoded.concept_labels == expected_concept
    firsts = [
        i
        for i, w in enumerate(encoded.word_ids)
        if w >= 0 and (i == 0 or encoded.word_ids[i - 1] != w)
    ]
    assert [encoded.tag_labels[i] for i in firsts] == [tags.index(t) for t in SENTENCE.tags]
    others = set(range(len(encoded.word_ids))) - set(firsts)
    assert all(encoded.tag_labels[i] == IGNORE_TAG for i in others)


def test_batches_pad_and_exclude_padding(tiny_gpt2, corpus):
    dataset = encode_split(corpus, tiny_gpt2.tokenizer, "validation", limit=5)
    batch = dataset.collate([0, 1, 2])
    lengths = [len(dataset.encoded[i].token_ids) for i in range(3)]
    assert batch.tokens.shape == (3, -(-max(lengths) // 8) * 8)  # padded to a multiple of 8
    assert batch.attention_mask.sum(1).tolist() == lengths
    assert (batch.concept_labels[batch.attention_mask == 0] == IGNORE_CONCEPT).all()


def test_unknown_label_lists_labels(tiny_gpt2, corpus):
    dataset = encode_split(corpus, tiny_gpt2.tokenizer, "validation", limit=5)
    assert concept_labels(corpus) == ("O", "LOC", "PER", "ORG", "MISC")
    with pytest.raises(NeuroplasticError, match="labels present: O, LOC, PER, ORG, MISC"):
        dataset.label_id("LOCATION")


def test_local_hub_style_dataset_directory(tmp_path, capfd, monkeypatch):
    """The hub loading path (datasets.load_dataset), fed a local directory instead of a name.
    Off a terminal (a log file) datasets draws no bars; on one it does."""
    import json

    from neuroplastic import progress

    rows = [{"tokens": ["Ann", "visited", "Oslo"], "ner_tags": ["B-PER", "O", "B-LOC"]}] * 3
    for directory in (tmp_path / "log", tmp_path / "terminal"):
        directory.mkdir()
        for split in ("train", "validation"):
            (directory / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = load_corpus(str(tmp_path / "log"))
    assert corpus.validation[0].tags == ("B-PER", "O", "B-LOC")
    assert corpus.entity_types == ("LOC", "PER")
    assert "Generating" not in capfd.readouterr().err
    monkeypatch.setattr(progress, "_interactive", lambda: True)
    load_corpus(str(tmp_path / "terminal"))  # another directory: its splits generated anew
    assert "Generating train split" in capfd.readouterr().err


def test_bad_encodings_and_tags_are_explained(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Paris B-LOC\nZ\xfcrich B-LOC\n".encode("latin-1"))
    with pytest.raises(NeuroplasticError, match=r"not UTF-8 text.*iconv"):
        read_conll_file(path)
    datasets = pytest.importorskip("datasets")
    split = datasets.Dataset.from_dict({"tokens": [["Oslo"]], "ner_tags": [["LOC"]]})
    with pytest.raises(NeuroplasticError, match=r"toy/train, row 0: 'LOC' is not an NER tag"):
        from_hf_dataset(datasets.DatasetDict(train=split, validation=split), name="toy")


def _sentence(text: str) -> NerSentence:
    """``"Ann/B-PER flew/O"`` -> a sentence (words and tags from ``word/TAG`` pairs)."""
    pairs = [token.rsplit("/", 1) for token in text.split()]
    return NerSentence(tuple(w for w, _ in pairs), tuple(t for _, t in pairs))


def test_entity_mentions_read_iob2_spans():
    sentences = [
        _sentence("Ann/B-PER Lee/I-PER flew/O to/O New/B-LOC York/I-LOC Paris/B-LOC ./O"),
        _sentence("French/B-MISC Open/I-MISC Rome/B-LOC"),
        _sentence("nothing/O here/O"),
        # IOB1-style: I- after O, or after another type, starts a mention.
        _sentence("Oslo/I-LOC Acme/I-ORG Inc/I-ORG"),
    ]
    assert entity_mentions(sentences) == [
        ("PER", ("Ann", "Lee")),
        ("LOC", ("New", "York")),
        ("LOC", ("Paris",)),
        ("MISC", ("French", "Open")),
        ("LOC", ("Rome",)),
        ("LOC", ("Oslo",)),
        ("ORG", ("Acme", "Inc")),
    ]


def test_mention_overlap_counts_verbatim_same_type_mentions():
    train = [
        _sentence("Ann/B-PER Lee/I-PER visited/O Paris/B-LOC and/O New/B-LOC York/I-LOC ./O"),
        _sentence("Jordan/B-PER spoke/O French/B-MISC"),
        _sentence("Acme/B-ORG Group/I-ORG"),
    ]
    validation = [
        # Paris: seen. New York: seen. York alone: only a part of a seen mention -> unseen.
        _sentence("Paris/B-LOC ,/O New/B-LOC York/I-LOC and/O York/B-LOC"),
        # Jordan the country is not Jordan the person; Ann alone is not Ann Lee.
        _sentence("Jordan/B-LOC and/O Paris/B-LOC ;/O Ann/B-PER"),
        # Repeats count every time: Ann Lee twice, seen twice.
        _sentence("Ann/B-PER Lee/I-PER met/O Ann/B-PER Lee/I-PER"),
        _sentence("French/B-MISC Open/I-MISC"),
    ]
    overlap = mention_overlap(train, validation)
    assert overlap == {
        "LOC": {"mentions": 5, "seen": 3, "share": 3 / 5},
        "MISC": {"mentions": 1, "seen": 0, "share": 0.0},
        "PER": {"mentions": 3, "seen": 2, "share": 2 / 3},
    }
    assert "ORG" not in overlap  # only types present in the compared split
    assert mention_overlap(validation, validation)["LOC"]["share"] == 1.0
    assert mention_overlap([], validation)["PER"] == {"mentions": 3, "seen": 0, "share": 0.0}
    assert mention_overlap(train, [_sentence("no/O entity/O")]) == {}


def test_embedded_corpus_probe_split_through_load_and_encode(tiny_gpt2):
    corpus = load_corpus(n_train=40, n_validation=20, n_probe=30, seed=4)
    assert (len(corpus.train), len(corpus.validation), len(corpus.probe)) == (40, 20, 30)
    dataset = encode_split(corpus, tiny_gpt2.tokenizer, "probe", limit=10, start=5)
    assert dataset.sentences == corpus.probe[5:15]
    # The embedded splits share no entity mention.
    for reference, other in [("train", "validation"), ("train", "probe"), ("validation", "probe")]:
        overlap = mention_overlap(getattr(corpus, reference), getattr(corpus, other))
        assert overlap and all(entry["seen"] == 0 for entry in overlap.values())
    # Without n_probe the probe split is empty, and asking to encode it says why.
    plain = load_corpus(n_train=5, n_validation=5, seed=4)
    assert plain.probe == []
    with pytest.raises(NeuroplasticError, match=r"no probe split: load it with .*n_probe=N"):
        encode_split(plain, tiny_gpt2.tokenizer, "probe")
    with pytest.raises(NeuroplasticError, match="unknown split 'name'"):
        encode_split(plain, tiny_gpt2.tokenizer, "name")


def test_files_and_hub_datasets_have_an_empty_probe_split(tmp_path):
    (tmp_path / "train.txt").write_text("Paris B-LOC\nis O\n\nAnn B-PER\n")
    (tmp_path / "dev.txt").write_text("Rome B-LOC\n")
    corpus = load_corpus(str(tmp_path), n_probe=10)
    assert corpus.probe == [] and len(corpus.train) == 2
    # The field comes after tag_names: older positional constructions keep working.
    positional = NerCorpus("x", corpus.train, corpus.validation, ("O", "B-LOC", "B-PER"))
    assert positional.probe == [] and positional.tag_names == ("O", "B-LOC", "B-PER")
    # Tags seen only in the probe split count when the tag names are inferred.
    inferred = NerCorpus("x", corpus.train, corpus.validation, probe=[_sentence("Acme/B-ORG")])
    assert inferred.tag_names == ("O", "B-LOC", "B-ORG", "B-PER")


def _word_token_ids(dataset: ConceptDataset, row: int, word_index: int) -> list[int]:
    encoded = dataset.encoded[row]
    return [t for t, w in zip(encoded.token_ids, encoded.word_ids, strict=True) if w == word_index]


def test_byte_level_bpe_tokenizes_the_first_word_like_any_other(tiny_gpt2):
    """GPT-2's tokenizer folds the space before a word into its first token; the first word
    of a sentence must get that space too (Hugging Face's add_prefix_space=True)."""
    tokenizer = tiny_gpt2.tokenizer
    bare = tokenizer("Paris", add_special_tokens=False)["input_ids"]
    spaced = tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    assert bare != spaced  # the problem being fixed: the same name, two spellings
    assert _needs_prefix_space(tokenizer)
    first = _sentence("Paris/B-LOC is/O big/O")
    middle = _sentence("I/O love/O Paris/B-LOC")
    labels, tags = ("O", "LOC"), ("O", "B-LOC")
    dataset = ConceptDataset([first, middle], tokenizer, labels, tags)
    assert _word_token_ids(dataset, 0, 0) == _word_token_ids(dataset, 1, 2) == spaced
    # The whole sentence is the BOS token, then the text with a leading space.
    expected = tokenizer(" Paris is big", add_special_tokens=False)["input_ids"]
    assert dataset.encoded[0].token_ids == [tokenizer.bos_token_id, *expected]
    # Alignment holds: each word's tokens spell it, its first token carries the tag.
    for row, sentence in enumerate((first, middle)):
        encoded = dataset.encoded[row]
        assert encoded.word_ids[0] == -1  # BOS
        for index, word in enumerate(sentence.words):
            pieces = _word_token_ids(dataset, row, index)
            assert tokenizer.decode(pieces) == " " + word
            first_position = encoded.word_ids.index(index)
            assert encoded.tag_labels[first_position] == tags.index(sentence.tags[index])
            later = [i for i, w in enumerate(encoded.word_ids) if w == index][1:]
            assert all(encoded.tag_labels[i] == IGNORE_TAG for i in later)
            assert all(
                encoded.concept_labels[i] == labels.index(sentence.entity_labels[index])
                for i in [first_position, *later]
            )


def test_tokenizer_that_adds_the_prefix_space_itself_is_not_given_two(tiny_gpt2):
    from tokenizers.pre_tokenizers import ByteLevel

    tokenizer = copy.deepcopy(tiny_gpt2.tokenizer)
    tokenizer.backend_tokenizer.pre_tokenizer = ByteLevel(add_prefix_space=True)
    assert not _needs_prefix_space(tokenizer)
    sentence = _sentence("Paris/B-LOC is/O big/O")
    ours = ConceptDataset([sentence], tokenizer, ("O", "LOC"), ("O", "B-LOC")).encoded[0]
    reference = ConceptDataset(
        [sentence], tiny_gpt2.tokenizer, ("O", "LOC"), ("O", "B-LOC")
    ).encoded[0]
    assert ours == reference


def test_wordpiece_text_is_unchanged(tiny_bert):
    tokenizer = tiny_bert.tokenizer
    assert not _needs_prefix_space(tokenizer)
    sentence = _sentence("Paris/B-LOC is/O big/O")
    dataset = ConceptDataset([sentence], tokenizer, ("O", "LOC"), ("O", "B-LOC"))
    # [CLS] Paris is big [SEP], exactly what the tokenizer makes of the joined words.
    assert dataset.encoded[0].token_ids == tokenizer("Paris is big")["input_ids"]
    assert dataset.encoded[0].word_ids[0] == -1 and dataset.encoded[0].word_ids[-1] == -1
