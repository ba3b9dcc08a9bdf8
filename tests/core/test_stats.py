import pytest
import torch

from neuroplastic.core.models import mlp_hook_name
from neuroplastic.core.stats import (
    NeuronStats,
    StatsCollector,
    _BatchTokens,
    above_threshold,
    collect_stats,
    largest_first_within,
)
from neuroplastic.data.concept import Batch
from neuroplastic.data.load import encode_split
from neuroplastic.errors import NeuroplasticError


def full_cache(model, dataset):
    """Reference: every labelled token's activations from run_with_cache, concatenated."""
    n_layers = model.cfg.n_layers
    acts, labels, where = [], [], []
    for batch in dataset.batches(7):
        _, cache = model.run_with_cache(
            batch.tokens,
            attention_mask=batch.attention_mask,
            names_filter=lambda name: name.endswith("mlp.hook_post"),
        )
        keep = batch.concept_labels >= 0
        acts.append(
            torch.stack([cache[mlp_hook_name(layer)][keep] for layer in range(n_layers)], 1)
        )
        labels.append(batch.concept_labels[keep])
        rows, cols = keep.nonzero(as_tuple=True)
        where.append(torch.stack([batch.sentence_index[rows], cols], 1))
    return torch.cat(acts).double(), torch.cat(labels), torch.cat(where)


def test_streaming_stats_equal_full_cache(tiny_model, corpus):
    dataset = encode_split(corpus, tiny_model.tokenizer, "validation", limit=40)
    with torch.no_grad():
        stats = collect_stats(tiny_model, dataset, batch_size=16, top_k=5, progress=False)
        acts, labels, where = full_cache(tiny_model, dataset)  # [token, layer, neuron]
    for z in range(len(dataset.label_names)):
        chosen = acts[labels == z]
        assert stats.count[z] == len(chosen)
        if len(chosen):
            torch.testing.assert_close(stats.mean()[z], chosen.mean(0), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(
                stats.variance()[z], chosen.var(0, unbiased=False), rtol=1e-4, atol=1e-6
            )
    values, _ = acts.topk(5, dim=0)  # [5, layer, neuron]
    torch.testing.assert_close(
        stats.top_values, values.permute(1, 2, 0).float(), rtol=1e-5, atol=1e-6
    )
    # Ties (a decoder gives equal activations to equal prefixes) may order entries either way,
    # so check each stored (sentence, position) really carries the stored value and label.
    row_of = {(int(s), int(p)): i for i, (s, p) in enumerate(where)}
    n_layers, d_mlp, k = stats.top_values.shape
    for layer in range(n_layers):
        for neuron in range(0, d_mlp, 7):
            for j in range(k):
                row = row_of[
                    (
                        int(stats.top_sentence[layer, neuron, j]),
                        int(stats.top_position[layer, neuron, j]),
                    )
                ]
                assert (
                    abs(float(acts[row, layer, neuron]) - float(stats.top_values[layer, neuron, j]))
                    < 1e-5
                )
                assert int(labels[row]) == int(stats.top_label[layer, neuron, j])


# (value, sentence, position) entries per neuron, to compare two statistics' top-k. Which of
# several tokens with exactly equal activations is kept depends on the order they were seen
# in (a causal model gives every sentence that starts with the same words the same
# activations there), so entries are compared where their value is unique in the neuron's
# list and above its cut-off.
def unique_entries(stats):
    rows = set()
    for layer in range(stats.n_layers):
        for neuron in range(stats.d_mlp):
            values = stats.top_values[layer, neuron].tolist()
            for j, value in enumerate(values):
                if values.count(value) == 1 and value > min(values):
                    rows.add(
                        (layer, neuron, value, int(stats.top_sentence[layer, neuron, j]),
                         int(stats.top_position[layer, neuron, j]))
                    )  # fmt: skip
    return rows


def test_merged_halves_equal_one_pass(tiny_gpt2, corpus):
    dataset = encode_split(corpus, tiny_gpt2.tokenizer, "validation", limit=30)
    whole = collect_stats(tiny_gpt2, dataset, batch_size=8, top_k=4, progress=False)
    first = collect_stats(
        tiny_gpt2, dataset, batch_size=8, top_k=4, indices=range(0, 13), progress=False
    )
    second = collect_stats(
        tiny_gpt2, dataset, batch_size=8, top_k=4, indices=range(13, 30), progress=False
    )
    merged = first.merge(second)
    assert torch.equal(merged.count, whole.count)
    # Batches are reduced in float32, and the halves cut the data into other batches.
    torch.testing.assert_close(merged.sum, whole.sum, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged.sum_sq, whole.sum_sq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged.top_values, whole.top_values)

    assert unique_entries(merged) == unique_entries(whole)
    assert len(unique_entries(whole)) > stats_size(whole) // 2


def stats_size(stats):
    return stats.top_values.numel()


def test_save_load_round_trip(tiny_gpt2, corpus, tmp_path):
    dataset = encode_split(corpus, tiny_gpt2.tokenizer, "validation", limit=10)
    stats = collect_stats(tiny_gpt2, dataset, top_k=3, progress=False)
    stats.save(tmp_path / "s.safetensors")
    loaded = NeuronStats.load(tmp_path / "s.safetensors")
    assert loaded.label_names == stats.label_names
    for name in ("count", "sum", "sum_sq", "top_values", "top_sentence", "top_token"):
        assert torch.equal(getattr(loaded, name), getattr(stats, name))


def test_float32_batches_folded_in_float64_match_a_float64_reference(tiny_gpt2):
    """A long stream (300 batches, 76,800 tokens) with a large common offset, fed straight to
    the hooks: totals within 1e-6 relative of a float64 reduction (a float32 running total is
    already at 6e-7 here and grows with the stream), and the threshold-merged top-k equal to a
    top-k over the whole stream."""
    n_layers, d_mlp = tiny_gpt2.cfg.n_layers, tiny_gpt2.cfg.d_mlp
    labels = ("O", "LOC", "PER")
    collector = StatsCollector(tiny_gpt2, labels, top_k=7)
    generator = torch.Generator().manual_seed(0)
    n_batches, n_rows, n_pos = 300, 16, 16
    all_acts, all_labels = [], []
    for index in range(n_batches):
        concept = torch.randint(-1, 3, (n_rows, n_pos), generator=generator)
        batch = Batch(
            tokens=torch.randint(0, 100, (n_rows, n_pos), generator=generator),
            attention_mask=torch.ones(n_rows, n_pos, dtype=torch.long),
            concept_labels=concept,
            tag_labels=concept,
            word_ids=concept,
            sentence_index=torch.arange(index * n_rows, (index + 1) * n_rows),
        )
        acts = 100.0 + torch.randn(n_layers, n_rows, n_pos, d_mlp, generator=generator)
        collector.begin(batch)
        for layer, (_, hook) in enumerate(collector.hooks):
            hook(acts[layer], None)
        keep = concept >= 0
        all_acts.append(acts[:, keep].double())  # [layer, kept, neuron]
        all_labels.append(concept[keep])
    stats = collector.finish()
    acts, labels_seen = torch.cat(all_acts, 1), torch.cat(all_labels)
    for z in range(3):
        chosen = acts[:, labels_seen == z]
        assert int(stats.count[z]) == chosen.shape[1]
        expected_sum, expected_sq = chosen.sum(1), chosen.square().sum(1)
        assert ((stats.sum[z] - expected_sum).abs() / expected_sum.abs()).max() < 1e-6
        assert ((stats.sum_sq[z] - expected_sq).abs() / expected_sq).max() < 1e-6
    values, _ = acts.float().topk(7, dim=1)  # [layer, 7, neuron]
    assert torch.equal(stats.top_values, values.permute(0, 2, 1))


@pytest.mark.parametrize("model_name", ["tiny_gpt2", "tiny_bert"])
def test_the_dense_and_sparse_top_k_merges_agree_exactly(model_name, corpus, request):
    """The two ways of merging a batch into full buffers (sparse: the CPU's default; dense:
    the GPU's) keep the same values, bit for bit, and the same tokens wherever values differ."""
    model = request.getfixturevalue(model_name)
    dataset = encode_split(corpus, model.tokenizer, "train", limit=60)
    dense, sparse = (
        collect_stats(model, dataset, batch_size=8, top_k=4, progress=False, merge=merge)
        for merge in ("dense", "sparse")
    )
    assert torch.equal(dense.top_values, sparse.top_values)
    assert unique_entries(dense) == unique_entries(sparse)  # ties may keep another token
    with pytest.raises(NeuroplasticError, match="merge must be one of auto, dense, sparse"):
        collect_stats(model, dataset, merge="fast", progress=False)
    for bad, message in [
        (dict(batch_size=0), "batch_size must be at least 1 sentence; got 0"),
        (dict(indices=[3, 60, 999]), r"indices \[60, 999\] are outside the dataset's 60"),
        (dict(indices=[-1]), r"indices \[-1\] are outside"),
        (dict(indices=[]), "indices name no sentence: give some of the dataset's 60"),
    ]:
        with pytest.raises(NeuroplasticError, match=message):
            collect_stats(model, dataset, progress=False, **bad)


def test_folding_several_batches_into_one_merge_keeps_the_same_tokens_ties_included():
    """The sparse merge keeps the tokens above each neuron's k-th value and merges those of
    several batches at once: the buffers, values and which tokens (the same ones among equal
    values), equal to merging every batch as it comes, on a stream full of ties."""
    from neuroplastic.core.stats import _TopK

    generator = torch.Generator().manual_seed(1)
    n_layers, d_mlp, k = 2, 24, 5
    every, folded = (
        _TopK(n_layers, d_mlp, k, torch.device("cpu"), merge="sparse", fold=fold)
        for fold in (0, 10_000)
    )
    seen, stream, metas = 0, [], []
    for batch in range(40):
        n = int(torch.randint(1, 30, (1,), generator=generator))
        acts = torch.randint(0, 12, (n, d_mlp), generator=generator).float()  # many ties
        meta = torch.stack(
            [torch.full((n,), batch), torch.arange(n), torch.arange(n) % 7, torch.zeros(n)], 1
        ).long()
        for top in (every, folded):
            for layer in range(n_layers):
                top.update(layer, acts + layer, meta, full=seen >= k)
        stream.append(acts)
        metas.append(meta)
        seen += n
    assert any(folded._pending_size)  # something was still waiting to be merged
    (v1, m1), (v2, m2) = every.result(seen), folded.result(seen)
    assert torch.equal(v1, v2) and torch.equal(m1, m2)
    # Both are the whole stream's top k: by hand, a sort of every token of the stream at once,
    # per neuron; and each kept token (batch, row) is a distinct token of the stream that had
    # that value. (Which of several tied tokens a batch's own top-k keeps is torch.topk's
    # choice, so the tokens are checked against their values, not against a tie order.)
    stream, metas = torch.cat(stream), torch.cat(metas)
    row_of = {(int(b), int(r)): i for i, (b, r) in enumerate(metas[:, :2].tolist())}
    for layer in range(n_layers):
        assert torch.equal(v1[layer], (stream + layer).sort(dim=0, descending=True).values[:k].T)
        for neuron in range(d_mlp):
            kept = [row_of[(int(b), int(r))] for b, r, *_ in m1[layer, neuron].tolist()]
            assert len(set(kept)) == k
            assert torch.equal(stream[kept, neuron] + layer, v1[layer, neuron])
            assert torch.equal(m1[layer, neuron], metas[kept])


def test_the_side_stream_runs_work_in_place_off_cuda(tiny_gpt2, corpus):
    from neuroplastic.core.streams import SideStream

    side, done = SideStream(torch.device("cpu")), []
    side.run(lambda: done.append(1), reads=(torch.zeros(1),))
    side.end_batch()
    side.join()
    assert not side.active and done == [1]
    dataset = encode_split(corpus, tiny_gpt2.tokenizer, "train", limit=24)
    plain, overlapped = (
        collect_stats(tiny_gpt2, dataset, batch_size=8, top_k=4, progress=False, overlap=o)
        for o in (False, True)
    )
    assert torch.equal(plain.sum, overlapped.sum) and torch.equal(
        plain.top_token, overlapped.top_token
    )


def test_one_key_sort_orders_as_a_sort_by_value_then_by_owner():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(5000, generator=generator).round(decimals=1)  # many ties
    values[::7] = -0.0
    values[::11] = 0.0
    values[::13] = -torch.inf
    values[::17] = torch.inf
    values[::19] = 3e38
    values[::23] = -1e-40  # subnormal
    owner = torch.randint(0, 40, (5000,), generator=generator)
    by_value = values.argsort(descending=True, stable=True)  # the two sorts it replaces
    expected = by_value[owner[by_value].argsort(stable=True)]
    assert torch.equal(largest_first_within(owner, values), expected)


@pytest.mark.parametrize("n_rows", [0, 5, 8, 203])
@pytest.mark.parametrize("passing", [0.0, 0.02, 0.5])
def test_the_blocked_threshold_finds_what_a_comparison_of_every_value_finds(n_rows, passing):
    """Every value above its neuron's threshold, each neuron's in row order, whether the
    blocks' first look is taken (2% pass) or every value is compared (half pass), with ties
    at the threshold, neurons where all or none pass, and a last block cut short."""
    generator = torch.Generator().manual_seed(n_rows)
    d_mlp = 37
    acts = torch.randint(0, 50, (n_rows, d_mlp), generator=generator).float()  # many ties
    threshold = torch.full((d_mlp,), 49.0 - 50 * passing)
    threshold[::5] = -torch.inf  # a buffer not full yet: every value passes
    threshold[1::7] = torch.inf
    rows, neurons, values = above_threshold(acts, threshold)
    expected_rows, expected_neurons = (acts > threshold).nonzero(as_tuple=True)
    by_neuron = (expected_neurons * max(n_rows, 1) + expected_rows).argsort()  # row order within
    got = (neurons * max(n_rows, 1) + rows).argsort(stable=True)
    assert torch.equal(rows[got], expected_rows[by_neuron])
    assert torch.equal(neurons[got], expected_neurons[by_neuron])
    assert torch.equal(values[got], acts[expected_rows, expected_neurons][by_neuron])
    # each neuron's rows come in row order, as the stable merge needs
    for neuron in range(d_mlp):
        mine = rows[neurons == neuron]
        assert torch.equal(mine, mine.sort().values)


def test_sums_by_index_add_each_row_to_its_label_in_row_order():
    """The CPU's sums per label (``index_add_``) equal a float32 loop adding each row to its
    label's total in row order, bit for bit; the matmul with the one-hot gives the same sums
    to float32 rounding; the counts are the labels' token counts."""
    generator = torch.Generator().manual_seed(3)
    n_pos, n_labels, d_mlp = 37, 4, 11
    concept = torch.randint(-1, n_labels, (2, n_pos), generator=generator)
    concept[0, :3] = 2  # a label with several rows in a row
    batch = Batch(
        tokens=torch.randint(0, 50, (2, n_pos), generator=generator),
        attention_mask=torch.ones(2, n_pos, dtype=torch.long),
        concept_labels=concept,
        tag_labels=concept,
        word_ids=concept,
        sentence_index=torch.tensor([5, 6]),
    )
    kept_labels = concept.flatten()[concept.flatten() >= 0]
    acts = 10.0 + torch.randn(len(kept_labels), d_mlp, generator=generator)
    expected = torch.zeros(n_labels, d_mlp)
    for row, label in zip(acts, kept_labels.tolist(), strict=True):
        expected[label] = expected[label] + row
    cpu = torch.device("cpu")
    by_index = _BatchTokens.of(batch, n_labels, cpu, by_index=True)
    by_matmul = _BatchTokens.of(batch, n_labels, cpu, by_index=False)
    assert by_index.by_label is None
    assert torch.equal(by_index.label_sums(acts), expected)
    torch.testing.assert_close(by_matmul.label_sums(acts), expected, rtol=1e-6, atol=1e-5)
    assert by_index.count.tolist() == [int((kept_labels == z).sum()) for z in range(n_labels)]


def test_the_index_and_matmul_sums_give_the_same_statistics(tiny_bert, corpus):
    dataset = encode_split(corpus, tiny_bert.tokenizer, "train", limit=40)
    by_index, by_matmul = (
        collect_stats(tiny_bert, dataset, batch_size=8, top_k=4, progress=False, sums=sums)
        for sums in ("index", "matmul")
    )
    assert torch.equal(by_index.count, by_matmul.count)
    assert torch.equal(by_index.top_values, by_matmul.top_values)
    assert torch.equal(by_index.top_sentence, by_matmul.top_sentence)
    torch.testing.assert_close(by_index.sum, by_matmul.sum, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(by_index.sum_sq, by_matmul.sum_sq, rtol=1e-6, atol=1e-6)
    with pytest.raises(NeuroplasticError, match="sums must be one of auto, index, matmul"):
        collect_stats(tiny_bert, dataset, sums="fast", progress=False)
