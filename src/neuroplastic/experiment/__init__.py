"""The study: one run (pipeline), its chase and pre-emption rounds, and sweeps over seeds and
settings (serially or on Ray)."""
