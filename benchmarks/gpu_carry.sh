#!/usr/bin/env bash
# Builds .gpu/, the folder benchmarks/gpu_check.sh reads on a GPU machine that has PyTorch and
# transformers but cannot reach the network (the device machine of benchmarks/RESULTS.md):
#   .gpu/whl/    py3.12 wheels of the packages it lacks, at the versions installed here
#   .gpu/minilm/ the embedded model's directory, weights stored as float16 (half the transfer)
#   .gpu/data/   the embedded corpus as CoNLL files (train 4,000 / validation 400 sentences)
#   .gpu/cache/  the tiny models' tokenizers ($NEUROPLASTIC_CACHE)
# Run from the repository root after `make install`; .gpu/ is git-ignored, so name it in the
# device call's carry: it must stay under the transfer's 64 MiB with the tree (checked below).
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
DEST=.gpu
# What transformer-lens, the core and the GPU test import that the device image lacks (its
# package list: /work/.library/device/KINDS.md). datasets brings dill and multiprocess,
# circuitsvis importlib-metadata and its lazy-importer; wandb, which transformer-lens names,
# is imported only to train with its own loop.
PACKAGES=(transformer-lens beartype fancy-einsum typeguard transformers-stream-generator
  datasets dill multiprocess circuitsvis importlib-metadata lazy-importer seqeval)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64
  manylinux2014_x86_64 manylinux1_x86_64)

rm -rf "$DEST"
mkdir -p "$DEST/whl" "$DEST/data" "$DEST/cache"
for package in "${PACKAGES[@]}"; do
  version=$("$PYTHON" -m pip show "$package" | sed -n 's/^Version: //p')
  # A wheel for 3.12 when the index has one; else (a pure-Python sdist: seqeval) built here.
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]/#/--platform=}" -d "$DEST/whl" "$package==$version" 2>/dev/null \
    || "$PYTHON" -m pip wheel -q --no-deps -w "$DEST/whl" "$package==$version"
done

NEUROPLASTIC_CACHE=$PWD/$DEST/cache HF_HUB_OFFLINE=1 "$PYTHON" - "$DEST" <<'EOF'
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from neuroplastic.core.generated import _tiny_tokenizer_dir
from neuroplastic.core.models import embedded_model_path
from neuroplastic.data.load import load_corpus

dest = Path(sys.argv[1])
for kind in ("gpt2", "bert"):
    _tiny_tokenizer_dir(kind)  # into $NEUROPLASTIC_CACHE

source = embedded_model_path()
shutil.copytree(source, dest / "minilm", ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
weights = load_file(source / "model.safetensors")
save_file({k: v.to(torch.float16) for k, v in weights.items()}, dest / "minilm/model.safetensors")

corpus = load_corpus("embedded", n_train=4000, n_validation=400, seed=0)
for split, sentences in (("train", corpus.train), ("validation", corpus.validation)):
    blocks = ("\n".join(f"{w} {t}" for w, t in zip(s.words, s.tags)) for s in sentences)
    (dest / "data" / f"{split}.txt").write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
print(f"{len(corpus.train)} train and {len(corpus.validation)} validation sentences written")
EOF

tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
carry=$(du -sb "$DEST" | cut -f1)
echo "$DEST: $((carry / 1048576)) MiB, with the tree $(((tree + carry) / 1048576)) MiB (limit 64)"
[ $((tree + carry)) -lt $((64 * 1048576)) ] || { echo "too large to carry" >&2; exit 1; }
