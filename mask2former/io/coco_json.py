"""The one reader of COCO jsons: `read_coco_json` checks the structure every tool relies on and raises
`DataError` naming the json and the item (bad JSON, missing sections, a category without id or name, repeated
category ids, an image file_name that is absolute or climbs out of the image folder with '..').
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..errors import UserError
from .files import UnsafePathError, safe_relative_name
from .images import require_file

logger = logging.getLogger(__name__)


def is_ignore_region(ann: dict) -> bool:
    """An annotation that marks pixels as not labelled (`"ignore": 1`, as tools/convert_dataset.py writes the
    ignore pixels of a mask dataset): painted as the ignore label, not counted as an object of its category."""
    return bool(ann.get("ignore", 0))


def object_annotations(annotations: list[dict]) -> list[dict]:
    """The annotations that are objects (not ignore regions): what counts, stratifies and samples objects."""
    return [ann for ann in annotations if not is_ignore_region(ann)]


class DataError(UserError, ValueError):
    """A bad annotation, image or json; the message names the json, the image and the annotation."""


def read_coco_json(json_file: str | Path) -> dict[str, Any]:
    """A COCO json, checked: valid JSON, an 'images' and a 'categories' list, each category with an id and a
    name and no id twice, every image file_name relative and inside the image folder. 'annotations' defaults
    to []. Image entries are otherwise checked at registration (`coco_semantic`), where `skip_bad` applies."""
    json_file = Path(json_file)
    require_file(json_file, "COCO json")
    try:
        data = json.loads(json_file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{json_file}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"{json_file}: a COCO json is an object with 'images' and 'categories', got a list or value")
    for section in ("images", "categories"):
        if not isinstance(data.get(section), list):
            raise DataError(f"{json_file}: missing the '{section}' list")
    data.setdefault("annotations", [])
    if not isinstance(data["annotations"], list):
        raise DataError(f"{json_file}: 'annotations' must be a list")
    _check_categories(data["categories"], json_file)
    _check_file_names(data["images"], json_file)
    return data


def _check_categories(categories: list, json_file: Path) -> None:
    seen: dict[int, str] = {}
    for index, category in enumerate(categories):
        if not isinstance(category, dict) or not isinstance(category.get("name"), str):
            raise DataError(f"{json_file}: category {index} needs an integer 'id' and a 'name', got {category!r}")
        category_id = category.get("id")
        if not isinstance(category_id, int) or isinstance(category_id, bool):
            raise DataError(f"{json_file}: category {category['name']!r} has id {category_id!r}; ids are integers")
        if category_id in seen:
            raise DataError(
                f"{json_file}: category id {category_id} is given twice ({seen[category_id]!r} and "
                f"{category['name']!r}); each category needs its own id (labels are assigned in id order)"
            )
        seen[category_id] = category["name"]


def _check_file_names(images: list, json_file: Path) -> None:
    for image in images:
        if isinstance(image, dict) and "file_name" in image:
            where = f"{json_file}: image {image['file_name']!r} (id {image.get('id')}):"
            if not isinstance(image["file_name"], str):
                raise DataError(f"{where} file_name must be a string")
            try:
                safe_relative_name(image["file_name"], "file_name")
            except UnsafePathError as error:
                raise DataError(f"{where} {error}") from None
