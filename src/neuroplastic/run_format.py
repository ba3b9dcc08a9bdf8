"""The run directory's format version: what a run's config.json says under ``format``, and the
check that this release can read it."""

from __future__ import annotations

from typing import Any

from neuroplastic.errors import NeuroplasticError

#: The run directory's format version, written into its config.json as ``format`` so that a
#: later release knows which layout it reads (and can migrate it): 0 is the first releases'
#: (no manifest.json, stage markers without a config hash: read as it is, nothing to verify);
#: 1 adds manifest.json and the markers' config hash, which every reader then requires. Runs of
#: format 1 written before the key existed are told apart by their manifest or a hashed marker
#: (:func:`neuroplastic.store.manifest.run_format`). 2: the stages' probes are fitted on half
#: the validation sentences and read the MLP output too (rows carry ``probes``), and an
#: erasure's random control is matched in removed variance; a run of an earlier format reads
#: and reports as it is, but is not resumed (its done stages would mix with new ones).
RUN_FORMAT = 2
#: the first format whose probes and erasure control a resumed run may add stages to
RESUMABLE_FORMAT = 2
FORMAT_KEY = "format"
#: a stage row's probe readings beside each point's (``resid_post``, ``mlp_out``): the point's
#: name with this appended holds the base stage's probe held fixed
#: (:func:`neuroplastic.core.probes.fixed_readings_of`); older rows have none
FIXED_SUFFIX = "_fixed"
#: ... and this one the tagging head's own order of the concept's tokens
#: (:mod:`neuroplastic.core.head_reading`)
HEAD_READING = "head"


def check_format(value: Any, source: str) -> int:
    """``value`` as a run directory's format version this release reads, or a clear refusal."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise NeuroplasticError(
            f"{source}: {FORMAT_KEY} must be a run-directory version (an integer >= 0), got "
            f"{value!r}; restore the run's config.json"
        )
    if value > RUN_FORMAT:
        raise NeuroplasticError(
            f"{source}: the run directory has format {value}, written by a newer neuroplastic "
            f"(this one reads formats up to {RUN_FORMAT}); upgrade neuroplastic to read it"
        )
    return value
