"""A short record of which sentences a run was made with, so that a resumed run can tell.

A run's stages describe the sentences it trained, evaluated and ranked on. A resumption that
reads other sentences (a corpus file edited, a hub dataset's new revision, a different slice)
would append stages of another experiment to it. :func:`fingerprint` records each split's size
and a SHA-256 of its words and tags; :func:`changed_splits` names the splits whose record
differs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from neuroplastic.data.types import NerSentence

__all__ = ["changed_splits", "fingerprint"]


def fingerprint(splits: Mapping[str, Sequence[NerSentence]]) -> dict[str, dict[str, Any]]:
    """``{split: {"sentences": n, "sha256": hex}}``; the digest covers every word and tag in
    order and the sentence boundaries, and nothing else (not the tokenizer, not the file)."""
    record = {}
    for name, sentences in splits.items():
        digest = hashlib.sha256()
        for sentence in sentences:
            # One JSON line per sentence: words and tags can hold any character, a boundary
            # cannot be forged by them.
            line = json.dumps([sentence.words, sentence.tags], ensure_ascii=False)
            digest.update(line.encode("utf-8") + b"\n")
        record[name] = {"sentences": len(sentences), "sha256": digest.hexdigest()}
    return record


def changed_splits(recorded: Mapping[str, Any], now: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What differs between a recorded fingerprint and today's, a phrase per split (a split
    only one of them has is not compared: an older run recorded fewer)."""
    changes = []
    for name, current in now.items():
        before = recorded.get(name)
        if not isinstance(before, Mapping) or before == current:
            continue
        if before.get("sentences") != current["sentences"]:
            changes.append(
                f"{before.get('sentences')} {name} sentences then, {current['sentences']} now"
            )
        else:
            changes.append(f"the {current['sentences']} {name} sentences differ")
    return changes
