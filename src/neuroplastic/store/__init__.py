"""The run directory: every file a run writes, its manifest, locks, stage checkpoints, repair
of an interrupted run, and bases shared between runs."""
