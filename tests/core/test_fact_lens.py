"""The logit lens over facts (neuroplastic.core.fact_lens) against Hugging Face's own path:
each layer's hidden state through the model's final norm and language-model head, computed by
the wrapped transformers model with nothing of TransformerLens in between."""

from __future__ import annotations

import pytest
import torch

from neuroplastic.core.fact_lens import first_tokens, lens_accuracies, lens_log_probs
from neuroplastic.data.facts import generate_facts, multiple_choices
from neuroplastic.errors import NeuroplasticError


@pytest.fixture(scope="module")
def questions():
    return multiple_choices(generate_facts(n_cities=20), seed=0)[:12]


def _hugging_face_lens(model, prompt, choice_tokens):
    """Per layer, log p(first token of each choice) from HF's hidden states (index l + 1 is
    the output of block l; the last is already normed, so it is read from the logits)."""
    hf = model.original_model
    with torch.no_grad():
        out = hf(torch.tensor([prompt]), output_hidden_states=True)
        rows = []
        n_layers = len(out.hidden_states) - 1
        for layer in range(n_layers):
            if layer == n_layers - 1:
                logits = out.logits[0, -1]
            else:
                logits = hf.lm_head(hf.model.norm(out.hidden_states[layer + 1][0, -1]))
            rows.append(logits.log_softmax(-1)[choice_tokens])
    return torch.stack(rows)


def test_each_layer_reads_as_hugging_face_reads_it(tiny_llama, questions):
    prompts, choice_tokens = first_tokens(tiny_llama, questions[:3])
    with torch.no_grad():
        got = lens_log_probs(tiny_llama, prompts, choice_tokens)
    assert got.shape == (int(tiny_llama.cfg.n_layers), 3, 4)
    for index, prompt in enumerate(prompts):
        expected = _hugging_face_lens(tiny_llama, prompt, choice_tokens[index])
        torch.testing.assert_close(got[:, index], expected, rtol=1e-4, atol=1e-4)


def test_the_choices_first_tokens_are_those_after_the_prompt(tiny_llama, questions):
    """The prompt is the whole sentence's tokens up to the choice, and the choice's first
    token the next one: decoded, the prompt and the choice's start read back."""
    prompts, choice_tokens = first_tokens(tiny_llama, questions[:2])
    tokenizer = tiny_llama.tokenizer
    for prompt, question, row in zip(prompts, questions, choice_tokens, strict=False):
        for choice, token in zip(question.choices, row.tolist(), strict=True):
            sentence = tokenizer.decode(prompt + [token], skip_special_tokens=True)
            assert sentence.strip().endswith(tokenizer.decode([token]).strip())
            assert choice.startswith(tokenizer.decode([token]).strip())


def test_accuracy_is_the_share_whose_answer_token_wins_strictly(tiny_llama, questions):
    got = lens_accuracies(tiny_llama, questions, batch_size=5)
    prompts, choice_tokens = first_tokens(tiny_llama, questions)
    with torch.no_grad():
        scores = lens_log_probs(tiny_llama, prompts, choice_tokens)
    expected = []
    for layer in range(scores.shape[0]):
        right = 0
        for index, question in enumerate(questions):
            row = scores[layer, index].tolist()
            answer = row[question.answer_index]
            others = [v for i, v in enumerate(row) if i != question.answer_index]
            right += answer > max(others)
        expected.append(right / len(questions))
    assert got == pytest.approx(expected)
    with pytest.raises(NeuroplasticError, match="no questions"):
        lens_accuracies(tiny_llama, [])
