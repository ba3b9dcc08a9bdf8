"""The CUDA path, run wherever a GPU is present (skipped on CPU-only machines, as in CI)."""

import os

import pytest
import torch
from test_stats import unique_entries

from neuroplastic.core.ablation import Ablation
from neuroplastic.core.models import load_model, mlp_hook_name, run_forward
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.stats import collect_stats
from neuroplastic.core.training import TokenClassifier, TrainConfig, Trainer, tagging_loss
from neuroplastic.data.load import encode_split

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def corpus(request):
    """A CoNLL copy of the embedded corpus where the GPU machine lacks the [embedded] extra."""
    path = os.environ.get("NEUROPLASTIC_GPU_CONLL")
    if path:
        from neuroplastic.data.load import load_corpus

        return load_corpus(path)
    return request.getfixturevalue("embedded_corpus")


def test_statistics_on_the_gpu_equal_those_on_the_cpu(corpus):
    cpu = load_model("tiny-bert", seed=0)
    gpu = load_model("tiny-bert", seed=0, device="cuda")
    dataset = encode_split(corpus, cpu.tokenizer, "train", limit=40)
    on_cpu = collect_stats(cpu, dataset, batch_size=8, top_k=5, progress=False)
    on_gpu = collect_stats(gpu, dataset, batch_size=8, top_k=5, progress=False)
    assert on_gpu.sum.device.type == "cpu" and on_gpu.sum.dtype == torch.float64
    assert torch.equal(on_cpu.count, on_gpu.count)
    torch.testing.assert_close(on_gpu.sum, on_cpu.sum, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(on_gpu.sum_sq, on_cpu.sum_sq, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(on_gpu.top_values, on_cpu.top_values, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_on_the_gpu_keeps_held_neurons_at_zero(corpus, dtype):
    model = load_model("tiny-gpt2", seed=0, device="cuda", dtype=dtype)
    dataset = encode_split(corpus, model.tokenizer, "train", limit=64)
    module = TokenClassifier(model, len(dataset.tag_names)).to("cuda")
    neurons = NeuronSet.of(model.cfg.n_layers, model.cfg.d_mlp, [(0, 1), (1, 5), (1, 7)])
    trainer = Trainer(module, tagging_loss, dataset, 5, TrainConfig(batch_size=8), seed=0)
    with Ablation(model, neurons, permanent=True):
        losses = trainer.run(5, progress=False)
        batch = dataset.collate(list(range(8)))
        captured = {}

        def keep(layer):
            return lambda activation, hook: captured.setdefault(layer, activation)

        with model.hooks(fwd_hooks=[(mlp_hook_name(layer), keep(layer)) for layer in (0, 1)]):
            run_forward(model, batch.tokens, batch.attention_mask, stop_at=mlp_hook_name(1))
        stats = collect_stats(model, dataset, batch_size=8, top_k=3, progress=False)
    assert all(torch.isfinite(torch.tensor(losses)))
    first, second = captured[0], captured[1]
    assert second.dtype == getattr(torch, dtype)
    assert (first[..., 1] == 0).all() and (second[..., [5, 7]] == 0).all()
    assert (first[..., 0] != 0).any() and (second[..., 6] != 0).any()  # the others still fire
    # every held neuron, after five steps: no activation, so nothing in its statistics
    mask = neurons.mask()
    assert stats.sum.dtype == torch.float64 and torch.isfinite(stats.sum).all()
    assert (stats.sum[:, mask] == 0).all() and (stats.top_values[mask] == 0).all()
    assert (stats.sum[:, ~mask] != 0).any()


def test_the_sparse_top_k_merge_on_the_gpu_equals_the_dense_one(corpus):
    model = load_model("tiny-gpt2", seed=0, device="cuda")
    dataset = encode_split(corpus, model.tokenizer, "train", limit=60)
    dense, sparse = (
        collect_stats(model, dataset, batch_size=8, top_k=4, progress=False, merge=merge)
        for merge in ("dense", "sparse")
    )
    assert torch.equal(dense.top_values, sparse.top_values)
    # Which of several tokens with equal activations is kept may differ (a decoder gives equal
    # prefixes equal activations): tokens are compared where values are unique.
    assert unique_entries(dense) == unique_entries(sparse)


@pytest.mark.parametrize("merge", ["dense", "sparse"])
def test_reducing_on_a_side_stream_changes_no_bit(corpus, merge):
    model = load_model("tiny-gpt2", seed=0, device="cuda")
    dataset = encode_split(corpus, model.tokenizer, "train", limit=60)
    plain, overlapped = (
        collect_stats(
            model, dataset, batch_size=8, top_k=4, progress=False, merge=merge, overlap=overlap
        )
        for overlap in (False, True)
    )
    for field in ("count", "sum", "sum_sq", "top_values", "top_sentence", "top_position"):
        assert torch.equal(getattr(plain, field), getattr(overlapped, field)), field
