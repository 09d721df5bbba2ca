"""The one lookup of a name in a registry: an unknown name is one error type, whose message names the config key,
what is registered and the closest name."""

from __future__ import annotations

import difflib
from typing import Any

from fvcore.common.registry import Registry

from ..errors import UserError


class UnknownNameError(UserError, KeyError):
    """A name (from a config key) that no registered class answers to."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def lookup(registry: Registry, name: str, key: str) -> Any:
    """The object `registry` holds under `name`, which the config's `key` gave; UnknownNameError otherwise."""
    if name in registry:
        return registry.get(name)
    known = sorted(entry for entry, _ in registry)
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    raise UnknownNameError(f"{key} {name!r} is not registered{hint} Registered: {', '.join(known) or 'none'}")
