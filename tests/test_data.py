import pytest

from neuroplastic.data.concept import IGNORE_CONCEPT, IGNORE_TAG, ConceptDataset
from neuroplastic.data.conll import read_conll, read_conll_file
from neuroplastic.data.hf import from_hf_dataset
from neuroplastic.data.load import concept_labels, encode_split, load_corpus
from neuroplastic.data.types import NerSentence, iob1_to_iob2
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


def test_local_hub_style_dataset_directory(tmp_path):
    """The hub loading path (datasets.load_dataset), fed a local directory instead of a name."""
    import json

    rows = [{"tokens": ["Ann", "visited", "Oslo"], "ner_tags": ["B-PER", "O", "B-LOC"]}] * 3
    for split in ("train", "validation"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = load_corpus(str(tmp_path))
    assert corpus.validation[0].tags == ("B-PER", "O", "B-LOC")
    assert corpus.entity_types == ("LOC", "PER")


def test_bad_encodings_and_tags_are_explained(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Paris B-LOC\nZ\xfcrich B-LOC\n".encode("latin-1"))
    with pytest.raises(NeuroplasticError, match=r"not UTF-8 text.*iconv"):
        read_conll_file(path)
    datasets = pytest.importorskip("datasets")
    split = datasets.Dataset.from_dict({"tokens": [["Oslo"]], "ner_tags": [["LOC"]]})
    with pytest.raises(NeuroplasticError, match=r"toy/train, row 0: 'LOC' is not an NER tag"):
        from_hf_dataset(datasets.DatasetDict(train=split, validation=split), name="toy")
