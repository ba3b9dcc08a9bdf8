"""The erasure controls and the probe split on the embedded MiniLM (not fine-tuned): each
eraser's removed share of variance per layer, its matched and its uniform random control's,
and the probes' readings (new: fitted on one validation half, scored on the other; old:
fitted on the eraser's 160 sentences, scored on all validation sentences). Prints JSON:
benchmarks/results/controls-embedded-cpu.json."""

import json
import time

from neuroplastic.core.erasure import erase, fit_direction, fit_leace, fit_matched_control
from neuroplastic.core.halves import split_probe
from neuroplastic.core.models import load_model
from neuroplastic.core.probes import probe_auc, probe_readings
from neuroplastic.data.load import encode_split, load_corpus

m = load_model("embedded")
m.eval()
corpus = load_corpus(n_train=300, n_validation=160, seed=3)
fit = encode_split(corpus, m.tokenizer, "train", limit=160, max_length=48)
val = encode_split(corpus, m.tokenizer, "validation", max_length=48)
split = split_probe(len(val), 0, salt="readout")
a, b = val.subset(split.predict), val.subset(split.truth)
layers = list(range(m.cfg.n_layers))
out = {}


def readings(tag):
    r = probe_readings(m, a, b, "LOC", layers)
    out[tag] = {
        p: {n: {k: round(v, 3) for k, v in x.items()} for n, x in d.items()} for p, d in r.items()
    }
    old = probe_auc(m, fit, val, "LOC", layers)  # the old probe: fitted on the eraser's sentences
    out[tag + " old-probe"] = {n: round(v, 3) for n, v in old.items()}


readings("base")
for kind, fitter in (("leace", fit_leace), ("direction", fit_direction)):
    t = time.time()
    e = fitter(m, fit, "LOC", layers)
    c = fit_matched_control(m, fit, e, seed=0)
    u = e.random_control(seed=0)
    # the unmatched control's share, measured on its own stream
    from contextlib import nullcontext

    from neuroplastic.core.erasure import LinearErasure, _Moments, residual_tokens

    shares = {}
    for layer in layers:
        earlier = LinearErasure(
            "random",
            "LOC",
            *({k: v for k, v in p.items() if k < layer} for p in (u.left, u.right, u.bias)),
        )
        mo = _Moments()
        with erase(m, earlier) if earlier.left else nullcontext():
            for x, _ in residual_tokens(m, fit, [layer]):
                mo.add(x[layer])
        shares[layer] = u.removed_share(layer, mo.covariance())
    out[kind + " removed"] = {n: round(v, 5) for n, v in e.removed.items()}
    out[kind + " matched control removed"] = {n: round(v, 5) for n, v in c.removed.items()}
    out[kind + " unmatched control removed"] = {n: round(v, 5) for n, v in shares.items()}
    out[kind + " fit seconds"] = round(time.time() - t, 1)
    with erase(m, e):
        readings(kind)
    with erase(m, c):
        readings(kind + " matched control")
    with erase(m, u):
        readings(kind + " unmatched control")
print(json.dumps(out, indent=1))
