import pytest
import torch

from neuroplastic.ablation import ablate, mlp_neuron_weights, prune_weights
from neuroplastic.data.load import encode_split
from neuroplastic.errors import NeuroplasticError
from neuroplastic.metrics import entity_scores
from neuroplastic.models import mlp_hook_name
from neuroplastic.neurons import NeuronSet
from neuroplastic.training import TokenClassifier, TrainConfig, evaluate, tagging_loss, train


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
    with ablate(module.model, neurons):
        result = evaluate(module, data, "ner", "LOC", dead_neurons=neurons.mask(), progress=False)
    assert set(result.scores["f1"]) == {"overall", "LOC", "PER", "ORG", "MISC"}
    assert result.stats.count.sum() > 0


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
