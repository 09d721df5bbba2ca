"""Resuming into an output folder: a tool refuses to mix in outputs that were made with other settings."""

from __future__ import annotations

from collections.abc import Iterable


def changed_settings(old: dict, new: dict, keys: Iterable[str]) -> str:
    """'key: old before, new now; ...' for each of `keys` recorded in `old` whose value `new` changes; '' if none
    (a key an older run did not record is not a change)."""
    return "; ".join(
        f"{key}: {old[key]} before, {new.get(key)} now" for key in keys if key in old and old[key] != new.get(key)
    )
