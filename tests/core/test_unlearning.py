"""Gradient difference and RMU (neuroplastic.core.unlearning) against hand computations: one
step's loss terms from the model itself, and the first AdamW step's update, whose size is the
learning rate in every coordinate with a gradient (Adam divides the first moment by its root
second moment), in the direction that lowers the hand-computed loss."""

from __future__ import annotations

import pytest
import torch

from neuroplastic.core.training import batch_order, lm_loss
from neuroplastic.core.unlearning import (
    RETAIN_SALT,
    changed_tensors,
    gradient_difference,
    mean_residual_norm,
    rmu,
    steering_direction,
    token_mse,
)
from neuroplastic.data.concept import ConceptDataset
from neuroplastic.data.facts import (
    FACT_LABELS,
    FORGET,
    RETAIN,
    TRAIN_TEMPLATES,
    generate_facts,
    render_facts,
)
from neuroplastic.errors import NeuroplasticError

TAGS = ("O", *(f"{p}-{label}" for label in (FORGET, RETAIN) for p in ("B", "I")))
LR = 1e-3


@pytest.fixture(scope="module")
def sets(tiny_llama):
    facts = generate_facts(n_cities=20)
    capitals = [f for f in facts if f.relation == "capital_of"][:6]
    countries = [f for f in facts if f.relation == "country_of"][:6]

    def dataset(chosen, label):
        rendered = render_facts(chosen, TRAIN_TEMPLATES, label)
        return ConceptDataset(
            [r.sentence for r in rendered], tiny_llama.tokenizer, FACT_LABELS, TAGS, 32
        )

    return dataset(capitals, FORGET), dataset(countries, RETAIN)


def _first_batches(forget, retain, seed, batch_size=4):
    return (
        forget.collate(batch_order(len(forget), 1, batch_size, seed)[0]),
        retain.collate(batch_order(len(retain), 1, batch_size, seed + RETAIN_SALT)[0]),
    )


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_first_adam_step(before, after, gradients, names):
    """The first AdamW step (no weight decay) after clipping the gradient norm at 1: each
    coordinate moves by ``-LR * g / (|g| + eps)`` with ``g`` the clipped gradient, about the
    learning rate against the gradient's sign wherever it is not tiny."""
    total = torch.stack([gradients[n].norm() for n in names]).norm()
    clip = min(1.0, 1.0 / (float(total) + 1e-6))
    for name in names:
        gradient = gradients[name] * clip
        expected = -LR * gradient / (gradient.abs() + 1e-8)
        assert (gradient.abs() > 1e-6).any(), name
        torch.testing.assert_close(after[name] - before[name], expected, rtol=1e-3, atol=1e-7)


def _parameters(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_gradient_difference_one_step_by_hand(tiny_llama, sets):
    forget, retain = sets
    model, seed = tiny_llama, 3
    state, before = _weights(model), _parameters(model)
    forget_batch, retain_batch = _first_batches(forget, retain, seed)
    # By hand: the loss terms of the first batches and the gradient of their difference.
    model.zero_grad()
    forget_loss, retain_loss = lm_loss(model, forget_batch), lm_loss(model, retain_batch)
    (-forget_loss + 2.0 * retain_loss).backward()
    gradients = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    try:
        history = gradient_difference(
            model, forget, retain, lm_loss, 1, LR, 4, seed, retain_weight=2.0
        )
        assert history[0]["forget_loss"] == pytest.approx(forget_loss.item(), rel=1e-5)
        assert history[0]["retain_loss"] == pytest.approx(retain_loss.item(), rel=1e-5)
        # Every weight trains under gradient difference.
        _assert_first_adam_step(before, _parameters(model), gradients, list(before))
    finally:
        model.load_state_dict(state)


def test_rmu_one_step_by_hand(tiny_llama, sets):
    forget, retain = sets
    model, seed, layer, steering, alpha = tiny_llama, 5, 1, 3.0, 10.0
    state, before = _weights(model), _parameters(model)
    forget_batch, retain_batch = _first_batches(forget, retain, seed)
    hook = f"blocks.{layer}.hook_resid_post"
    target = steering * steering_direction(int(model.cfg.d_model), seed)
    # By hand from the whole model's forward pass: the mean over real tokens and coordinates
    # of (h - c*u)^2, the residual captured by a hook with its graph.
    model.zero_grad()
    captured = []
    model.run_with_hooks(
        forget_batch.tokens,
        attention_mask=forget_batch.attention_mask,
        fwd_hooks=[(hook, lambda activation, hook: captured.append(activation))],
    )
    residual = captured[0]
    real = forget_batch.attention_mask.bool()
    real[:, 0] = False  # the first position is one vector in every sentence: left out
    by_hand = ((residual - target) ** 2).mean(-1)[real].mean()
    by_hand.backward()  # (the retain term is zero at the unedited weights, and so its gradient)
    gradients = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    try:
        history = rmu(model, forget, retain, layer, [0, 1], steering, alpha, 1, LR, 4, seed)
        assert history[0]["forget_loss"] == pytest.approx(by_hand.item(), rel=1e-5)
        assert history[0]["retain_loss"] == 0.0
        after = _parameters(model)
        mlp = {id(p) for block in (0, 1) for p in model.blocks[block].mlp.parameters()}
        trained = [n for n, p in model.named_parameters() if id(p) in mlp]
        assert len(trained) == 6  # gate, up and down of two blocks
        _assert_first_adam_step(before, after, gradients, trained)
        frozen = [n for n in before if n not in trained]
        assert all(torch.equal(before[n], after[n]) for n in frozen)
    finally:
        model.load_state_dict(state)


def test_rmu_keeps_the_retain_residual_where_the_unedited_model_had_it(tiny_llama, sets):
    """After some steps, the reported retain term is the hand-computed squared distance of the
    edited model's retain residual from the unedited model's, on that step's batch."""
    forget, retain = sets
    model, seed, layer = tiny_llama, 2, 1
    state = _weights(model)
    hook = f"blocks.{layer}.hook_resid_post"
    batch = retain.collate(batch_order(len(retain), 2, 4, seed + RETAIN_SALT)[1])
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.tokens, attention_mask=batch.attention_mask)
        unedited = cache[hook]
    try:
        history = rmu(model, forget, retain, layer, [1], 3.0, 10.0, 2, 1e-2, 4, seed)
        # Step 2's retain term is measured after step 1's update, at the weights in between:
        # rebuild them by rerunning one step from the same start.
        model.load_state_dict(state)
        rmu(model, forget, retain, layer, [1], 3.0, 10.0, 1, 1e-2, 4, seed)
        with torch.no_grad():
            _, cache = model.run_with_cache(batch.tokens, attention_mask=batch.attention_mask)
        real = batch.attention_mask.bool()
        real[:, 0] = False
        by_hand = ((cache[hook] - unedited) ** 2).mean(-1)[real].mean()
        assert history[1]["retain_loss"] > 0
        assert history[1]["retain_loss"] == pytest.approx(by_hand.item(), rel=1e-4)
    finally:
        model.load_state_dict(state)


def test_the_first_position_is_one_vector_in_every_sentence(tiny_llama, sets):
    """Why RMU leaves it out: causal attention, one start token."""
    forget, _ = sets
    batch = forget.collate(list(range(len(forget))))
    assert (batch.tokens[:, 0] == batch.tokens[0, 0]).all()
    with torch.no_grad():
        _, cache = tiny_llama.run_with_cache(batch.tokens, attention_mask=batch.attention_mask)
    first = cache["blocks.1.hook_resid_post"][:, 0]
    torch.testing.assert_close(first, first[:1].expand_as(first))


def test_token_mse_leaves_padding_out():
    activations = torch.zeros(1, 3, 2)
    activations[0, 2] = 100.0  # a padded position
    target = torch.ones(2)
    mask = torch.tensor([[1, 1, 0]])
    assert float(token_mse(activations, target, mask)) == pytest.approx(1.0)


def test_the_steering_direction_is_a_seeded_unit_vector_of_positive_coordinates():
    u = steering_direction(16, seed=4)
    assert float(u.norm()) == pytest.approx(1.0)
    assert (u >= 0).all()
    assert torch.equal(u, steering_direction(16, seed=4))
    assert not torch.equal(u, steering_direction(16, seed=5))


def test_mean_residual_norm_is_the_full_cache_mean(tiny_llama, sets):
    forget, _ = sets
    batch = forget.collate(list(range(len(forget))))
    with torch.no_grad():
        _, cache = tiny_llama.run_with_cache(batch.tokens, attention_mask=batch.attention_mask)
    real = batch.attention_mask.bool()
    real[:, 0] = False
    norms = cache["blocks.0.hook_resid_post"].norm(dim=-1)[real]
    got = mean_residual_norm(tiny_llama, forget, 0, batch_size=5)
    assert got == pytest.approx(float(norms.mean()), rel=1e-4)


def test_changed_tensors_are_exactly_the_edited_ones(tiny_llama):
    state = _weights(tiny_llama)
    try:
        with torch.no_grad():
            tiny_llama.blocks[1].mlp.parameters().__next__().add_(1.0)
        changed = changed_tensors(tiny_llama, state)
        assert len(changed) == 1
        (name,) = changed
        assert name.startswith("blocks.1.mlp")
        assert torch.equal(changed[name], state[name] + 1.0)
    finally:
        tiny_llama.load_state_dict(state)


def test_bad_settings_are_refused_before_any_step(tiny_llama, sets):
    forget, retain = sets
    state = _weights(tiny_llama)
    with pytest.raises(NeuroplasticError, match="at or before the steered layer"):
        rmu(tiny_llama, forget, retain, 0, [1], 3.0, 1.0, 1, LR, 4, 0)
    with pytest.raises(NeuroplasticError, match="some of the model's"):
        rmu(tiny_llama, forget, retain, 5, [5], 3.0, 1.0, 1, LR, 4, 0)
    with pytest.raises(NeuroplasticError, match="steps must be at least 1"):
        gradient_difference(tiny_llama, forget, retain, lm_loss, 0, LR, 4, 0)
    assert all(torch.equal(v, state[k]) for k, v in tiny_llama.state_dict().items())


def test_an_edit_leaves_no_gradient_behind(tiny_llama, sets):
    """A later training that clips over every parameter would count a stale gradient."""
    forget, retain = sets
    state = _weights(tiny_llama)
    try:
        gradient_difference(tiny_llama, forget, retain, lm_loss, 1, LR, 4, 0)
        assert all(p.grad is None for p in tiny_llama.parameters())
        rmu(tiny_llama, forget, retain, 1, [1], 3.0, 1.0, 1, LR, 4, 0)
        assert all(p.grad is None for p in tiny_llama.parameters())
    finally:
        tiny_llama.load_state_dict(state)
