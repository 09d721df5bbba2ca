"""Catalogs fail loudly: duplicates, unknown names, metadata changed after it was set."""

from __future__ import annotations

import pytest

from mask2former.data.catalog import DatasetCatalog, MetadataCatalog


def test_register_get_and_duplicate() -> None:
    DatasetCatalog.register("a", lambda: [{"file_name": "x"}])
    assert DatasetCatalog.get("a") == [{"file_name": "x"}]
    with pytest.raises(KeyError, match="'a' is already registered"):
        DatasetCatalog.register("a", lambda: [])


def test_unknown_dataset_lists_registered() -> None:
    DatasetCatalog.register("one", lambda: [])
    DatasetCatalog.register("two", lambda: [])
    with pytest.raises(KeyError, match="'three' is not registered. Registered: one, two"):
        DatasetCatalog.get("three")


def test_loader_must_return_a_list() -> None:
    DatasetCatalog.register("bad", lambda: {"not": "a list"})
    with pytest.raises(TypeError, match="returned dict"):
        DatasetCatalog.get("bad")


def test_metadata_set_once() -> None:
    meta = MetadataCatalog.get("m").set(stuff_classes=["a", "b"])
    meta.stuff_classes = ["a", "b"]  # same value: fine
    with pytest.raises(ValueError, match="already"):
        meta.stuff_classes = ["a", "c"]
    with pytest.raises(AttributeError, match="has no 'palette'. It has: name, stuff_classes"):
        _ = meta.palette
