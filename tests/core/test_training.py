import pytest
import torch

from neuroplastic.core.ablation import ablate, check_can_regrow, mlp_neuron_weights, prune_weights
from neuroplastic.core.metrics import entity_scores
from neuroplastic.core.models import head_hook_name, is_decoder, mlp_hook_name
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.training import (
    TokenClassifier,
    TrainConfig,
    Trainer,
    batch_order,
    evaluate,
    padding_share,
    tagging_loss,
    train,
)
from neuroplastic.data.load import encode_split
from neuroplastic.errors import NeuroplasticError


@pytest.fixture
def setup(tiny_model, corpus):
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    data = encode_split(corpus, tiny_model.tokenizer, "train", limit=48)
    torch.manual_seed(0)
    module = TokenClassifier(tiny_model, len(data.tag_names))
    neurons = NeuronSet.of(
        tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp, [(0, 3), (0, 40), (1, 7), (1, 8)]
    )
    yield module, data, neurons
    tiny_model.load_state_dict(state)


def input_rows(model, neurons):
    rows = []
    for layer, indices in neurons.by_layer().items():
        w_in, b_in, _ = mlp_neuron_weights(model, layer)
        rows.append(w_in.tensor.index_select(w_in.neuron_dim, torch.tensor(indices)).clone())
    return rows


def test_held_ablation_holds_across_optimizer_steps(setup):
    module, data, neurons = setup
    model = module.model
    seen = []

    def record(activation, hook):
        seen.append((hook.name, activation.detach().clone()))

    grads = []

    def check_grads(step, loss):
        grads.append(step)

    with ablate(model, neurons, permanent=True):
        with model.hooks(fwd_hooks=[(mlp_hook_name(layer), record) for layer in range(2)]):
            # Gradients of pruned neurons' input weights are exactly zero at every step.
            config = TrainConfig(learning_rate=1e-3, weight_decay=0.0, batch_size=8)
            original = torch.optim.AdamW.step

            def step_and_check(self, *args, **kwargs):
                for layer, indices in neurons.by_layer().items():
                    w_in, _, _ = mlp_neuron_weights(model, layer)
                    parameter = next(
                        p for p in model.parameters() if p.data_ptr() == w_in.tensor.data_ptr()
                    )
                    index = torch.tensor(indices)
                    assert parameter.grad.abs().sum() > 0
                    assert (parameter.grad.index_select(w_in.neuron_dim, index) == 0).all()
                grads.append(True)
                return original(self, *args, **kwargs)

            torch.optim.AdamW.step = step_and_check
            try:
                before = input_rows(model, neurons)
                train(module, tagging_loss, data, 4, config, seed=0, progress=False)
            finally:
                torch.optim.AdamW.step = original
    assert len(grads) == 4
    # Without weight decay and with zero gradients, AdamW leaves their input weights untouched.
    for old, new in zip(before, input_rows(model, neurons), strict=True):
        assert torch.equal(old, new)
    mask = neurons.mask()
    for name, activation in seen:
        layer = int(name.split(".")[1])
        assert (activation[..., mask[layer]] == 0).all()


@pytest.mark.parametrize("zero_output", [False, True])
def test_regrow_lets_pruned_neurons_change(setup, zero_output):
    module, data, neurons = setup
    prune_weights(module.model, neurons, zero_output=zero_output)
    assert all((rows == 0).all() for rows in input_rows(module.model, neurons))
    train(
        module,
        tagging_loss,
        data,
        3,
        TrainConfig(learning_rate=1e-3, batch_size=8),
        seed=0,
        progress=False,
    )
    regrown = any((rows != 0).any() for rows in input_rows(module.model, neurons))
    # Zeroing both sides is a stationary point: no gradient reaches either side, ever.
    assert regrown is (not zero_output)


def test_evaluation_stops_when_an_ablation_does_not_hold(setup):
    module, data, neurons = setup
    with pytest.raises(NeuroplasticError, match="stopped holding"):
        evaluate(module, data, "ner", "LOC", dead_neurons=neurons.mask(), progress=False)
    batch = data.collate(list(range(8)))
    with torch.no_grad():
        plain = module(batch.tokens, batch.attention_mask)
    with ablate(module.model, neurons):
        result = evaluate(module, data, "ner", "LOC", dead_neurons=neurons.mask(), progress=False)
        with torch.no_grad():
            held = module(batch.tokens, batch.attention_mask)
    assert set(result.scores["f1"]) == {"overall", "LOC", "PER", "ORG", "MISC"}
    # Independently: the same neurons silenced by zeroing their weights, no hook at all.
    prune_weights(module.model, neurons, zero_output=True)
    pruned = evaluate(module, data, "ner", "LOC", dead_neurons=neurons.mask(), progress=False)
    with torch.no_grad():
        silenced = module(batch.tokens, batch.attention_mask)
    assert not torch.allclose(held, plain)  # the hooks did change the forward
    torch.testing.assert_close(held, silenced, rtol=1e-5, atol=1e-6)
    assert pruned.scores == result.scores


def test_non_finite_loss_is_a_clear_error(setup):
    module, data, _ = setup

    def broken(module, batch):
        return tagging_loss(module, batch) * float("nan")

    with pytest.raises(NeuroplasticError, match="loss became nan at step 1"):
        train(module, broken, data, 2, TrainConfig(), seed=0, progress=False)


def test_per_type_f1_by_hand():
    truth = [["B-LOC", "I-LOC", "O", "B-PER"], ["B-ORG", "O", "B-LOC"]]
    guess = [["B-LOC", "I-LOC", "O", "O"], ["B-ORG", "O", "B-PER"]]
    scores = entity_scores(truth, guess, ["LOC", "PER", "ORG", "MISC"])
    # LOC: 1 of 2 found, 1 predicted -> P 1, R 0.5, F1 2/3.  PER: 0 correct of 1 true, 1 predicted.
    assert scores["f1"]["LOC"] == pytest.approx(2 / 3)
    assert scores["precision"]["LOC"] == 1.0 and scores["recall"]["LOC"] == 0.5
    assert scores["f1"]["PER"] == 0.0
    assert scores["f1"]["ORG"] == 1.0
    assert scores["f1"]["MISC"] == 0.0
    # Overall: 2 correct, 3 predicted, 4 true -> P 2/3, R 1/2, F1 4/7.
    assert scores["f1"]["overall"] == pytest.approx(4 / 7)


def _learning_rates(trainer, n_steps):
    rates = []
    for _ in range(n_steps):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.run(1, progress=False)
    return rates


def test_one_schedule_across_stages_and_a_restart_per_stage(setup):
    module, data, _ = setup
    config = TrainConfig(learning_rate=1.0, batch_size=8, warmup_fraction=0.0)
    continuous = Trainer(module, tagging_loss, data, 6, config, seed=0)
    # One warm-up step, then linear decay over the other five: no saw-tooth at the boundary.
    assert _learning_rates(continuous, 6) == pytest.approx([1, 1, 0.8, 0.6, 0.4, 0.2])
    per_stage = Trainer(module, tagging_loss, data, 6, config, seed=0, schedule_steps=3)
    rates = _learning_rates(per_stage, 3)
    per_stage.restart_schedule()
    rates += _learning_rates(per_stage, 3)
    assert rates == pytest.approx([1, 1, 0.5] * 2)


@pytest.mark.parametrize("group", [0, 3])
def test_a_restored_trainer_continues_exactly(setup, group):
    module, data, _ = setup
    config = TrainConfig(learning_rate=1e-3, batch_size=8, group_by_length=group)
    start = {k: v.detach().clone() for k, v in module.named_parameters()}
    straight = Trainer(module, tagging_loss, data, 6, config, seed=4).run(6, progress=False)
    after_straight = {k: v.detach().clone() for k, v in module.named_parameters()}

    with torch.no_grad():
        for name, parameter in module.named_parameters():
            parameter.copy_(start[name])
    first = Trainer(module, tagging_loss, data, 6, config, seed=4)
    losses = first.run(3, progress=False)
    state = first.state_dict()
    resumed = Trainer(module, tagging_loss, data, 6, config, seed=4)  # a new process
    resumed.load_state_dict(state)
    losses += resumed.run(3, progress=False)
    assert losses == straight
    for name, parameter in module.named_parameters():
        assert torch.equal(parameter, after_straight[name]), name


def test_the_head_reads_what_hugging_face_heads_read(tiny_gpt2, tiny_bert, corpus):
    data = encode_split(corpus, tiny_gpt2.tokenizer, "train", limit=2)
    batch = data.collate([0, 1])
    seen = []
    module = TokenClassifier(tiny_gpt2, len(data.tag_names))
    module.head.register_forward_hook(lambda m, inputs, output: seen.append(inputs[0]))
    module.eval()
    with torch.no_grad():
        module(batch.tokens, batch.attention_mask)
        hf = tiny_gpt2.original_model.transformer(
            batch.tokens, attention_mask=batch.attention_mask
        ).last_hidden_state  # after GPT-2's final layer norm
    assert torch.allclose(seen[0], hf, atol=1e-5)
    assert head_hook_name(tiny_gpt2) == "ln_final.hook_out"
    assert head_hook_name(tiny_bert) == f"blocks.{tiny_bert.cfg.n_layers - 1}.hook_resid_post"


def test_decoders_are_told_apart_by_their_config(tiny_gpt2, tiny_bert):
    assert is_decoder(tiny_gpt2) and not is_decoder(tiny_bert)
    renamed = type("Model", (), {"cfg": type("Cfg", (), {"attention_dir": "bidirectional"})})
    renamed.cfg.architecture = "GPT2LMHeadModel"  # a name is not evidence
    assert not is_decoder(renamed)


def test_a_relu_neuron_pruned_on_its_input_side_gets_no_gradient():
    # Why regrow refuses ReLU models: at pre-activation 0 the derivative is 0.
    w_in = torch.zeros(1, 4, requires_grad=True)
    x = torch.randn(5, 4)
    torch.relu(x @ w_in.T).sum().backward()
    assert (w_in.grad == 0).all()
    w_in = torch.zeros(1, 4, requires_grad=True)
    torch.nn.functional.gelu(x @ w_in.T).sum().backward()
    assert (w_in.grad != 0).any()
    model = type("Model", (), {"cfg": type("Cfg", (), {"act_fn": "relu"})})
    with pytest.raises(NeuroplasticError, match="never regrows"):
        check_can_regrow(model)


def test_lm_evaluation_is_the_mean_next_token_loss_on_each_side_of_the_concept(tiny_gpt2, corpus):
    data = encode_split(corpus, tiny_gpt2.tokenizer, "validation", limit=10)
    concept_id = data.label_id("LOC")
    # By hand, one sentence at a time: no padding, the logits' own log-softmax.
    losses: dict[str, list[float]] = {"concept": [], "other": []}
    with torch.no_grad():
        for encoded in data.encoded:
            tokens = torch.tensor([encoded.token_ids])
            log_probs = tiny_gpt2(tokens, return_type="logits")[0, :-1].log_softmax(-1)
            nll = -log_probs.gather(-1, tokens[0, 1:, None])[:, 0]
            for loss, label in zip(nll.tolist(), encoded.concept_labels[1:], strict=True):
                if label >= 0:
                    losses["concept" if label == concept_id else "other"].append(loss)
    assert losses["concept"] and losses["other"]  # both sides have tokens to average
    expected = {side: sum(v) / len(v) for side, v in losses.items()}
    scores = evaluate(tiny_gpt2, data, "lm", "LOC", batch_size=4, progress=False).scores
    assert scores["lm_loss"] == pytest.approx(expected, rel=1e-5)


def test_evaluation_batched_by_length_scores_every_sentence_as_if_alone(setup):
    module, data, _ = setup
    order = data.by_length()
    lengths = [len(data.encoded[i].token_ids) for i in order]
    assert sorted(order) == list(range(len(data))) and lengths == sorted(lengths)
    assert lengths != [len(e.token_ids) for e in data.encoded]  # the order does change

    # One sentence a batch: no padding and no neighbours, whatever the order.
    batched = evaluate(module, data, "ner", "LOC", batch_size=16, progress=False).scores
    alone = evaluate(module, data, "ner", "LOC", batch_size=1, progress=False).scores
    assert batched == alone
    assert any(value > 0 for value in batched["f1"].values())  # not an all-zero tie

    model = module.model
    batched = evaluate(model, data, "lm", "LOC", batch_size=16, progress=False).scores
    alone = evaluate(model, data, "lm", "LOC", batch_size=1, progress=False).scores
    assert batched["lm_loss"] == pytest.approx(alone["lm_loss"], rel=1e-5)


def test_grouped_batches_hold_each_groups_sentences_in_runs_of_one_length():
    lengths = [(7 * i) % 23 + 1 for i in range(30)]  # 30 sentences of 1..23 tokens
    plain = batch_order(30, 12, 4, seed=5)
    grouped = batch_order(30, 12, 4, seed=5, lengths=lengths, group=5)
    assert batch_order(30, 12, 4, seed=5, lengths=lengths) == plain  # group 0: unchanged
    assert len(grouped) == 12 and all(len(batch) == 4 for batch in grouped)
    for start in (0, 5, 10):  # groups of 5 batches, the last one of 2
        before = [i for batch in plain[start : start + 5] for i in batch]
        after = grouped[start : start + 5]
        assert sorted(i for batch in after for i in batch) == sorted(before)
        # Batches cut one sorted run: no sentence in one is longer than any in a longer batch.
        spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in after)
        assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:], strict=False))
    assert grouped == batch_order(30, 12, 4, seed=5, lengths=lengths, group=5)  # seeded
    real, computed = padding_share(grouped, lengths)
    assert real == padding_share(plain, lengths)[0] == sum(lengths[i] for b in plain for i in b)
    assert computed < padding_share(plain, lengths)[1]


def test_padding_share_by_hand():
    # [3, 9] pads to 16 twice; [8] computes 8: 20 real tokens of 40 computed.
    assert padding_share([[0, 1], [2]], [3, 9, 8]) == (20, 40)


def test_grouping_needs_a_length_for_every_sentence():
    with pytest.raises(NeuroplasticError, match="3 lengths given for 4 sentences"):
        batch_order(4, 2, 2, seed=0, lengths=[1, 2, 3], group=2)


def test_float16_trains_in_mixed_precision_with_float32_weights_and_state(setup):
    """AdamW's eps (1e-8) is 0 in float16, so a float16 weight whose gradient is zero becomes
    0 / (0 + 0) = NaN at its first step. Mixed precision computes the forward pass in float16
    (torch.autocast) while the weights and AdamW's moments stay float32 (a GradScaler keeps
    small float16 gradients from flushing to zero): the loss stays finite at the default lr."""
    import math

    module, data, _ = setup
    assert torch.tensor(1e-8, dtype=torch.float16).item() == 0.0  # the cause, independently
    computed = []
    handle = module.head.register_forward_hook(lambda m, i, out: computed.append(out.dtype))
    try:
        config = TrainConfig(learning_rate=1e-4, autocast=torch.float16)
        trainer = Trainer(module, tagging_loss, data, 8, config, seed=0)
        losses = trainer.run(8, progress=False)
    finally:
        handle.remove()
    assert len(losses) == 8 and all(math.isfinite(loss) for loss in losses)
    assert set(computed) == {torch.float16}  # the forward pass ran in float16
    for parameter in module.parameters():
        assert parameter.dtype == torch.float32 and torch.isfinite(parameter).all()
    moments = [s for state in trainer.optimizer.state.values() for s in state.values()]
    assert moments and all(m.dtype == torch.float32 for m in moments if m.ndim > 0)
    assert "scaler" in trainer.state_dict()  # resumed with the scale it had
