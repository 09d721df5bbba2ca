"""Dataset and metadata catalogs in detectron2's style.

`DatasetCatalog.register(name, loader)` stores a zero-argument function that returns the dataset as
a list of dicts (the "dataset dicts"). `MetadataCatalog.get(name)` returns the dataset's metadata
(class names, palette, ignore label, ...). Both fail loudly: a duplicate name, an unknown name, or a
metadata field set twice to different values is an error that lists what exists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import UserError


class DatasetNameError(UserError, KeyError):
    """A dataset name registered twice, or asked for but not registered; the message lists what exists."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class _DatasetCatalog:
    def __init__(self) -> None:
        self._loaders: dict[str, Callable[[], list[dict]]] = {}

    def register(self, name: str, loader: Callable[[], list[dict]]) -> None:
        if not callable(loader):
            raise TypeError(f"dataset '{name}': the loader must be a function returning a list of dicts")
        if name in self._loaders:
            raise DatasetNameError(f"dataset '{name}' is already registered")
        self._loaders[name] = loader

    def get(self, name: str) -> list[dict]:
        if name not in self._loaders:
            raise DatasetNameError(
                f"dataset '{name}' is not registered. Registered: {', '.join(self.list()) or 'none'}"
            )
        dicts = self._loaders[name]()
        if not isinstance(dicts, list):
            raise TypeError(f"dataset '{name}': the loader returned {type(dicts).__name__}, expected a list")
        return dicts

    def list(self) -> list[str]:
        return sorted(self._loaders)

    def __contains__(self, name: str) -> bool:
        return name in self._loaders

    def remove(self, name: str) -> None:
        self._loaders.pop(name, None)


class Metadata:
    """Attributes of one dataset. Setting an attribute again to a different value is an error."""

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    def __setattr__(self, key: str, value: Any) -> None:
        if key in self.__dict__ and not _same(self.__dict__[key], value):
            raise ValueError(
                f"metadata '{key}' of dataset '{self.name}' is already {self.__dict__[key]!r}; "
                f"refusing to change it to {value!r}"
            )
        object.__setattr__(self, key, value)

    def __getattr__(self, key: str) -> Any:
        fields = ", ".join(sorted(self.__dict__))
        raise AttributeError(f"metadata of dataset '{self.name}' has no '{key}'. It has: {fields}")

    def set(self, **fields: Any) -> Metadata:
        for key, value in fields.items():
            setattr(self, key, value)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        return self.__dict__.get(key, default)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except ValueError:  # numpy arrays
        return a is b


class _MetadataCatalog:
    def __init__(self) -> None:
        self._metadata: dict[str, Metadata] = {}

    def get(self, name: str) -> Metadata:
        if name not in self._metadata:
            self._metadata[name] = Metadata(name)
        return self._metadata[name]

    def list(self) -> list[str]:
        return sorted(self._metadata)

    def remove(self, name: str) -> None:
        self._metadata.pop(name, None)


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()
