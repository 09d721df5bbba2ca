"""Tiny sizes: each model family declares, beside its config keys, the KEY VALUE overrides that make its models
small enough to build and run in about a second on a CPU, and the registry entries those sizes make tiny.

Declared the way config adders are registered: importing the family's module calls `register_tiny_sizes`
(plug-ins included, when an entry point imports them). The tests build every config and every registry entry at
these sizes (tests/conftest.py assembles TINY_MODEL from TINY_SIZES); a registry entry that no declaration names
fails the registry contract tests, by name. Nothing in the package applies them: they change no default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from fvcore.common.config import CfgNode
from fvcore.common.registry import Registry


@dataclass(frozen=True)
class TinySizes:
    """One family's tiny sizes."""

    family: str
    overrides: tuple[str, ...]  # KEY VALUE pairs, as CfgNode.merge_from_list takes them
    entries: tuple[tuple[Registry, str], ...]  # (registry, registered name) that these sizes make tiny
    # what a KEY VALUE pair cannot say because it depends on other values (timm: a smaller model of the same class)
    shrink: Callable[[CfgNode], None] | None = None


TINY_SIZES: dict[str, TinySizes] = {}


def register_tiny_sizes(
    family: str,
    overrides: Sequence[str],
    entries: Iterable[tuple[Registry, str]] = (),
    shrink: Callable[[CfgNode], None] | None = None,
) -> TinySizes:
    """Declare `family`'s tiny sizes: `overrides` (KEY VALUE pairs), the registry `entries` they make tiny, and an
    optional `shrink(cfg)` for what depends on other values. A family declared twice differently, or a key that
    another family already sizes, is a ValueError naming both."""
    sizes = TinySizes(family, tuple(overrides), tuple(entries), shrink)
    if len(sizes.overrides) % 2:
        raise ValueError(f"tiny sizes of {family!r}: overrides must be KEY VALUE pairs, got {len(overrides)} items")
    known = TINY_SIZES.get(family)
    if known is not None:
        if known != sizes:
            raise ValueError(f"tiny sizes of {family!r} declared twice, differently")
        return known
    for other in TINY_SIZES.values():
        shared = set(other.overrides[::2]) & set(sizes.overrides[::2])
        if shared:
            raise ValueError(f"tiny sizes of {family!r} and {other.family!r} both set {sorted(shared)}")
    TINY_SIZES[family] = sizes
    return sizes


def tiny_overrides() -> list[str]:
    """Every declared family's KEY VALUE overrides, in the order the families were declared."""
    return [item for sizes in TINY_SIZES.values() for item in sizes.overrides]


def has_tiny_sizes(registry: Registry, name: str) -> bool:
    """Whether a declaration names the entry `name` of `registry`."""
    return any(known is registry and entry == name for sizes in TINY_SIZES.values() for known, entry in sizes.entries)
