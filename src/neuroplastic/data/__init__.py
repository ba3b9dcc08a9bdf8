"""Concept data: word-level NER corpora and their model-token alignment."""
