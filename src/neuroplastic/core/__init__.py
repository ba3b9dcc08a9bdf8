"""The method on any TransformerLens model, with no run directory: models, neuron statistics,
rankings, neuron sets and their ablation, linear erasure, training and metrics."""
