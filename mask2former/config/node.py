"""The project's CfgNode: fvcore's, whose files are read by the one YAML reader and whose unknown-key errors name
the closest existing keys (or a key's new name)."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

from fvcore.common.config import CfgNode as _FvCfgNode

from .yaml_file import ConfigError, load_yaml_chain

# Keys this project once had under another name: a file that still uses one is told the name to use.
RENAMED_KEYS = {
    "MODEL.SEMASK.NUM_SEM_BLOCKS": "MODEL.SWIN.NUM_SEM_BLOCKS",
    "MODEL.SEMASK.SEM_WINDOW_SIZE": "MODEL.SWIN.SEM_WINDOW_SIZE",
    "MODEL.SEMASK.CATE_WEIGHT": "MODEL.MASK_FORMER.CATE_WEIGHT",
}


class CfgNode(_FvCfgNode):
    """fvcore's CfgNode whose unknown-key errors name the closest existing keys, and whose files (and their
    `_BASE_` chain) are read with the safe loader."""

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> dict:
        """fvcore's `_BASE_` inheritance through `load_yaml_chain`. `allow_unsafe` is accepted for fvcore's
        signature and changes nothing: no file is read with yaml.unsafe_load."""
        return load_yaml_chain(str(filename))

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        try:
            loaded = _widened(self, self.load_yaml_with_base(cfg_filename))
            self.merge_from_other_cfg(type(self)(loaded))
        except ConfigError:
            raise
        except KeyError as error:
            raise _unknown_key_error(self, error, source=cfg_filename) from None

    def merge_from_list(self, cfg_list: list) -> None:
        flags = [item for item in cfg_list if isinstance(item, str) and item.startswith("--")]
        if flags:
            raise ValueError(f"{flags[0]} stands among the KEY VALUE overrides: put options before them")
        if len(cfg_list) % 2 != 0:
            raise ValueError(f"config overrides must be KEY VALUE pairs, got an odd number: {cfg_list}")
        known = set(flatten_keys(self))
        for key in cfg_list[0::2]:
            if key not in known:
                raise KeyError(_unknown_key_message(key, known, source="command line"))
        widened = []
        for key, value in zip(cfg_list[0::2], cfg_list[1::2], strict=True):
            widened += [key, _float_value(_lookup(self, key), value)]
        super().merge_from_list(widened)


def _float_value(default: Any, value: Any) -> Any:
    """For a float key, an integer (`0`, as people type it) or `inf` / `.inf` as that float; else `value` as it is."""
    if not isinstance(default, float):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text is not None and text.lstrip("+-") in ("inf", ".inf"):
        return float(text.replace(".inf", "inf"))
    if text is not None and text.lstrip("+-").isdigit():
        return float(text)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _widened(defaults: _FvCfgNode, data: dict) -> dict:
    """`data` (a loaded config file) with integers given for float keys of `defaults` made floats."""
    for key, value in data.items():
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if isinstance(value, dict) and isinstance(default, dict):
            _widened(default, value)
        elif default is not None:
            data[key] = _float_value(default, value)
    return data


def _lookup(cfg: _FvCfgNode, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def flatten_keys(cfg: _FvCfgNode, prefix: str = "") -> Iterator[str]:
    """Every leaf key of `cfg` in dotted form (`INPUT.CROP.SIZE`)."""
    for key, value in cfg.items():
        full = f"{prefix}{key}"
        if isinstance(value, _FvCfgNode):
            yield from flatten_keys(value, prefix=f"{full}.")
        else:
            yield full


def _unknown_key_message(key: str, known: set[str], source: str) -> str:
    if key in RENAMED_KEYS:
        return f"config key '{key}' (from {source}) is now '{RENAMED_KEYS[key]}', the official name: rename it"
    close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"unknown config key '{key}' (from {source}).{hint}"


def _unknown_key_error(cfg: CfgNode, error: KeyError, source: str) -> KeyError:
    text = str(error.args[0]) if error.args else ""
    prefix = "Non-existent config key: "
    if not text.startswith(prefix):
        return error
    key = text[len(prefix) :]
    return KeyError(_unknown_key_message(key, set(flatten_keys(cfg)), source))
