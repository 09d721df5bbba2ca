"""Configuration: fvcore/yacs CfgNode with Mask2Former's key names and `_BASE_` inheritance.

`get_cfg()` returns the defaults every part of the project reads. This module holds the keys shared by all
(INPUT, DATASETS, DATALOADER, SOLVER, TEST, the meta architecture and heads); each model family keeps its own keys
beside its code in an `add_<part>_config(cfg)` function registered in CONFIG_ADDERS (`add_swin_config` in
modeling/backbone/swin.py, `add_dinat_config`, `add_resnet_config`, ...), and each plug-in in PLUGIN_CONFIG_ADDERS
(`add_semask_config`: applied after the families, whose keys it extends). `get_cfg()` applies every one
registered: importing `mask2former.modeling.register_all` registers the families (the modules that load configs
import it), and an entry point registers a plug-in by importing it (train_net.py and the tools import `semask`).
This module imports no model.

Config files are read with a YAML safe loader, for every file of a `_BASE_` chain: the one Python tag official
configs carry, `!!python/object/apply:eval ["<expression>"]`, is evaluated by `utils/safe_eval.py` (arithmetic,
range, int, list comprehensions; never Python's eval); any other Python tag is refused. A key set twice in one
block, or aliases that expand to more than MAX_YAML_NODES values, are refused naming the file (before anything is
expanded). `load_config` then refuses values that cannot work (VALUE_RULES): every tool gets the same checks.

Modules: `yaml_file` (the one YAML reader and ConfigError), `node` (CfgNode and its unknown-key messages),
`defaults` (get_cfg and the adder registries), `compatibility` (ONLY_DEFAULT and NO_EFFECT, the keys kept only so
official files load, and `config_yaml`, the config as a run writes it), `checks` (VALUE_RULES), `plugins` (the
plug-ins of child processes); this module holds `load_config`, the one way every entry point builds its config.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .checks import VALUE_RULES, check_config_values
from .compatibility import NO_EFFECT, ONLY_DEFAULT, config_yaml
from .defaults import CONFIG_ADDERS, PLUGIN_CONFIG_ADDERS, get_cfg
from .node import RENAMED_KEYS, CfgNode, flatten_keys
from .yaml_file import MAX_YAML_NODES, ConfigError, read_config_yaml

__all__ = [
    "CONFIG_ADDERS",
    "MAX_YAML_NODES",
    "NO_EFFECT",
    "ONLY_DEFAULT",
    "PLUGIN_CONFIG_ADDERS",
    "RENAMED_KEYS",
    "VALUE_RULES",
    "CfgNode",
    "ConfigError",
    "check_config_values",
    "config_yaml",
    "flatten_keys",
    "get_cfg",
    "load_config",
    "read_config_yaml",
]


def load_config(
    config_file: str | None,
    opts: list[str] | tuple[str, ...] = (),
    freeze: bool = True,
    values: dict | None = None,
) -> CfgNode:
    """The one way every entry point builds its config: defaults, then `config_file` (with its `_BASE_` chain),
    then `values` (a nested dict, as a config file's yaml holds), then the KEY VALUE `opts`; frozen unless
    `freeze=False`. Problems raise ConfigError naming the file or key."""
    cfg = get_cfg()
    if config_file:
        if not Path(config_file).is_file():
            raise ConfigError(f"config file not found: {config_file}")
        try:
            cfg.merge_from_file(str(config_file))
        except ConfigError:
            raise
        except KeyError as error:
            raise ConfigError(str(error.args[0]) if error.args else str(error)) from None
        except (yaml.YAMLError, ValueError, TypeError, AssertionError) as error:
            raise ConfigError(f"{config_file}: {error}") from None
    if values:
        try:
            cfg.merge_from_other_cfg(type(cfg)(values))
        except KeyError as error:
            raise ConfigError(str(error.args[0]) if error.args else str(error)) from None
        except (ValueError, TypeError, AssertionError) as error:
            raise ConfigError(f"config values: {error}") from None
    try:
        cfg.merge_from_list(list(opts))
    except KeyError as error:
        raise ConfigError(str(error.args[0]) if error.args else str(error)) from None
    except (ValueError, TypeError, AssertionError) as error:
        raise ConfigError(f"command-line overrides: {error}") from None
    check_config_values(cfg)
    if freeze:
        cfg.freeze()
    return cfg
