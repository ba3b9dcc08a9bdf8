"""The fitted lens (neuroplastic.core.fitted_lens) against independent computations: its maps
against ridge least squares solved by ``torch.linalg.lstsq`` on residuals cached one sentence
at a time, and both lenses on planted cases of an answer disconnected downstream of a layer
and of an answer removed before it."""

from __future__ import annotations

import pytest
import torch

from neuroplastic.core.fact_lens import choice_accuracies, lens_log_probs
from neuroplastic.core.fitted_lens import FLOOR, RIDGE, final_residuals, fit_lens
from neuroplastic.core.models import capture_into
from neuroplastic.data.concept import ConceptDataset
from neuroplastic.data.load import concept_labels
from neuroplastic.errors import NeuroplasticError

#: The planted cases' layer: tiny-llama has two, so the cut "after layer L + 1" is the last.
LAYER = 0


@pytest.fixture(scope="module")
def text(tiny_llama):
    """Sentences with no location in them, as the facts study fits its lens on."""
    from neuroplastic.experiment.facts_data import unrelated_text

    corpus = unrelated_text()
    return ConceptDataset(
        corpus.train[:12], tiny_llama.tokenizer, concept_labels(corpus), corpus.tag_names, 48
    )


def _cached(model, text):
    """Every layer's residual after its block at each sentence's tokens but its first, each
    sentence run alone (no padding), stacked: (layers, tokens, d)."""
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(int(model.cfg.n_layers))]
    rows = []
    with torch.no_grad():
        for encoded in text.encoded:
            _, cache = model.run_with_cache(
                torch.tensor([encoded.token_ids]), names_filter=lambda n: n in names
            )
            rows.append(torch.stack([cache[name][0, 1:] for name in names]))
    return torch.cat(rows, dim=1).double()


def _ridge(x, y, ridge):
    """Ridge with an unpenalised intercept as an augmented least-squares problem:
    [X - mean; sqrt(lambda) I] W = [Y - mean; 0], lambda = (ridge tr(S) + FLOOR sum|x|^2) / d."""
    mean_x, mean_y = x.mean(0), y.mean(0)
    centred_x, centred_y = x - mean_x, y - mean_y
    d = x.shape[1]
    strength = (ridge * (centred_x**2).sum() + FLOOR * (x**2).sum()) / d
    a = torch.cat([centred_x, strength.sqrt() * torch.eye(d, dtype=x.dtype)])
    b = torch.cat([centred_y, torch.zeros(d, y.shape[1], dtype=y.dtype)])
    weight = torch.linalg.lstsq(a, b).solution
    return weight, mean_y - mean_x @ weight


def test_the_maps_are_ridge_least_squares_on_every_token_but_the_first(tiny_llama, text):
    lens = fit_lens(tiny_llama, text, batch_size=5)  # three padded batches, streamed
    x = _cached(tiny_llama, text)
    assert lens.tokens == x.shape[1] == sum(len(e.token_ids) - 1 for e in text.encoded)
    for layer in range(x.shape[0] - 1):
        weight, bias = _ridge(x[layer], x[-1], RIDGE)
        torch.testing.assert_close(lens.weight[layer].double(), weight, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(lens.bias[layer].double(), bias, rtol=1e-4, atol=1e-4)
    # The last layer is read as it is: exactly the identity.
    assert torch.equal(lens.weight[-1], torch.eye(x.shape[-1]))
    assert torch.equal(lens.bias[-1], torch.zeros(x.shape[-1]))


def test_given_targets_are_predicted_at_their_own_positions(tiny_llama, text):
    """Another model's output (here this one's last layer bent by a fixed tanh map) taken by
    final_residuals, then predicted from this model's layers: pairs kept token by token."""
    d = int(tiny_llama.cfg.d_model)
    bend = torch.randn(d, d, generator=torch.Generator().manual_seed(0)) / d**0.5
    last = f"blocks.{int(tiny_llama.cfg.n_layers) - 1}.hook_resid_post"
    with tiny_llama.hooks(fwd_hooks=[(last, lambda act, hook: torch.tanh(act @ bend))]):
        targets = final_residuals(tiny_llama, text, batch_size=7)
        other = _cached(tiny_llama, text)[-1]
    lens = fit_lens(tiny_llama, text, batch_size=5, targets=targets)
    x = _cached(tiny_llama, text)
    weight, bias = _ridge(x[0], other, RIDGE)
    torch.testing.assert_close(lens.weight[0].double(), weight, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lens.bias[0].double(), bias, rtol=1e-4, atol=1e-4)
    with pytest.raises(NeuroplasticError, match="other text"):
        fit_lens(tiny_llama, text, targets=targets[:-1])


def test_the_last_layer_reads_as_the_logit_lens_reads_it(tiny_llama, text):
    lens = fit_lens(tiny_llama, text)
    prompts = [[5, 17, 300, 42], [9, 8, 7]]
    choices = torch.tensor([[11, 12, 13, 14], [100, 200, 300, 400]])
    with torch.no_grad():
        plain = lens_log_probs(tiny_llama, prompts, choices)
        fitted = lens_log_probs(tiny_llama, prompts, choices, lens)
    torch.testing.assert_close(fitted[-1], plain[-1], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Planted: disconnected and removed


def _read(model, prompts, choices, translate):
    with torch.no_grad():
        return lens_log_probs(model, prompts, choices, translate)


def _balanced(model, translate, groups=3):
    """Questions whose right answers are what the lens reads at LAYER at base, and what base's
    output reads too: groups of four prompts sharing one set of four choice tokens, each answer
    a different choice. A reading that does not depend on the prompt picks one answer per
    group: at most 1/4 right."""
    generator = torch.Generator().manual_seed(0)
    vocab = int(model.cfg.d_vocab)
    candidates = torch.randint(10, vocab, (256, 6), generator=generator).tolist()
    prompts, choices, answers = [], [], []
    for _ in range(50):
        if len(prompts) == 4 * groups:
            break
        choice = torch.randperm(vocab - 10, generator=generator)[:4] + 10
        scores = _read(model, candidates, choice.expand(len(candidates), 4), translate)
        at_layer, at_output = scores[LAYER].argmax(-1), scores[-1].argmax(-1)
        read = torch.where(at_layer == at_output, at_layer, -1).tolist()
        if not set(range(4)) <= set(read):
            continue
        for answer in range(4):
            prompts.append(candidates[read.index(answer)])
            choices.append(choice)
            answers.append(answer)
    assert len(prompts) == 4 * groups, "too few choice sets the lens tells apart"
    return prompts, torch.stack(choices), torch.tensor(answers)


@pytest.fixture
def planted(tiny_llama, text):
    """Hooks that replace a residual by its mean over the text's real tokens (a constant):
    ``disconnect`` after layer LAYER + 1, ``remove`` at layer LAYER's input."""
    names = {"disconnect": f"blocks.{LAYER + 1}.hook_resid_post"}
    names["remove"] = f"blocks.{LAYER}.hook_resid_pre"
    batch = text.collate(range(len(text)))
    captured = {}
    hooks = [(name, capture_into(captured, case)) for case, name in names.items()]
    with torch.no_grad(), tiny_llama.hooks(fwd_hooks=hooks):
        tiny_llama(batch.tokens, attention_mask=batch.attention_mask)
    real = batch.attention_mask.bool()
    means = {case: captured[case][real].mean(0) for case in names}

    def hold(case):
        tiny_llama.add_hook(
            names[case], lambda act, hook: means[case].expand_as(act).clone(), is_permanent=True
        )

    yield hold
    tiny_llama.reset_hooks(including_permanent=True)


def _accuracies(model, questions, translate=None):
    prompts, choices, answers = questions
    return choice_accuracies(model, prompts, choices, answers, batch_size=5, translate=translate)


def _constant(model, questions, translate=None):
    """Whether each group's reading at LAYER is one vector for all its prompts."""
    prompts, choices, _ = questions
    scores = _read(model, prompts, choices, translate)[LAYER]
    return torch.allclose(scores, scores[::4].repeat_interleave(4, dim=0), atol=1e-5)


def test_the_logit_lens_tells_disconnected_from_removed(tiny_llama, planted):
    questions = _balanced(tiny_llama, None)
    assert _accuracies(tiny_llama, questions) == [1.0, 1.0]  # base, by construction
    planted("disconnect")
    disconnected = _accuracies(tiny_llama, questions)
    assert disconnected[LAYER] == 1.0  # the answer is still there at LAYER...
    assert disconnected[-1] <= 0.25  # ... and no longer reaches the output
    tiny_llama.reset_hooks(including_permanent=True)
    planted("remove")
    assert _constant(tiny_llama, questions)
    assert _accuracies(tiny_llama, questions)[LAYER] <= 0.25


def test_the_fitted_lens_tells_disconnected_from_removed(tiny_llama, text, planted):
    """As the facts study fits it: each state's own maps, predicting base's output."""
    targets = final_residuals(tiny_llama, text)
    base = fit_lens(tiny_llama, text, targets=targets)
    questions = _balanced(tiny_llama, base)
    assert _accuracies(tiny_llama, questions, base) == [1.0, 1.0]
    planted("disconnect")
    lens = fit_lens(tiny_llama, text, targets=targets)
    disconnected = _accuracies(tiny_llama, questions, lens)
    assert disconnected[LAYER] == 1.0
    assert disconnected[-1] <= 0.25
    # Maps fitted to this state's own output learn the cut too: the text meets it as well,
    # and they read the answer as gone at LAYER, where it still is.
    own = fit_lens(tiny_llama, text)
    assert torch.equal(own.weight[LAYER], torch.zeros_like(own.weight[LAYER]))
    assert _accuracies(tiny_llama, questions, own)[LAYER] <= 0.25
    tiny_llama.reset_hooks(including_permanent=True)
    planted("remove")
    lens = fit_lens(tiny_llama, text, targets=targets)
    assert _constant(tiny_llama, questions, lens)
    assert _accuracies(tiny_llama, questions, lens)[LAYER] <= 0.25
