"""The one reader of the project's YAML files: a safe loader for every file of a `_BASE_` chain. The one Python
tag official configs carry, `!!python/object/apply:eval ["<expression>"]`, is evaluated by `utils/safe_eval.py`
(never Python's eval); any other Python tag is refused. A key set twice in one block, or aliases that expand to
more than MAX_YAML_NODES values, are refused naming the file (before anything is expanded)."""

from __future__ import annotations

import os
from typing import Any

import yaml
from fvcore.common.config import BASE_KEY

from ..errors import UserError
from ..utils.safe_eval import ALLOWED as _EVAL_ALLOWED
from ..utils.safe_eval import SafeEvalError, safe_eval


class ConfigError(UserError, KeyError):
    """A config file or override the project cannot use; the message names the file or key."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"


# The most values (scalars, lists, mappings) a config file may expand to with its aliases counted at every use;
# official configs hold a few hundred. More is refused before anything is built ("billion laughs" files).
MAX_YAML_NODES = 100_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _ConfigLoader(yaml.SafeLoader):
    """yaml's SafeLoader plus the official configs' eval tag (through safe_eval); other Python tags refused; a key
    set twice in one mapping is refused (yaml would keep the last silently)."""

    config_file = "<config>"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise ConfigError(
                    f"{_where(self, key_node)}: {key} is set a second time in the same block (first at line "
                    f"{first}); YAML would silently drop the first: write each key once (merge the two blocks)"
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep)


def _check_expanded_size(node: yaml.Node, filename: str) -> None:
    """ConfigError when the document, with every alias expanded, holds more than MAX_YAML_NODES values, or an
    alias inside the block it names (an endless value); counted on the composed graph, before construction."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(current: yaml.Node) -> int:
        key = id(current)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError(
                f"{filename}, line {current.start_mark.line + 1}: an alias refers to the block that contains it "
                "(an endless value): write the value out"
            )
        open_nodes.add(key)
        total = 1
        if isinstance(current, yaml.SequenceNode):
            total += sum(size(child) for child in current.value)
        elif isinstance(current, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in current.value)
        open_nodes.discard(key)
        if total > MAX_YAML_NODES:
            raise ConfigError(
                f"{filename}: its aliases (*name) expand to more than {MAX_YAML_NODES} values (line "
                f"{current.start_mark.line + 1} onwards): a config this large is a mistake or an attack; not read"
            )
        sizes[key] = total
        return total

    size(node)


def _where(loader: _ConfigLoader, node: yaml.Node) -> str:
    return f"{loader.config_file}, line {node.start_mark.line + 1}"


def _construct_eval(loader: _ConfigLoader, node: yaml.Node) -> Any:
    example = '!!python/object/apply:eval ["[int(x * 0.1 * 512) for x in range(5, 21)]"]'
    if not isinstance(node, yaml.SequenceNode) or len(node.value) != 1:
        raise ConfigError(f"{_where(loader, node)}: the eval tag takes one quoted expression in brackets: {example}")
    expression = loader.construct_object(node.value[0])
    if not isinstance(expression, str):
        raise ConfigError(f"{_where(loader, node)}: the eval tag takes a quoted expression, got {expression!r}")
    try:
        return safe_eval(expression)
    except SafeEvalError as error:
        raise ConfigError(
            f"{_where(loader, node)}: !!python/object/apply:eval {expression!r}: {error}. Config files are read "
            f"without running code: only {_EVAL_ALLOWED} are evaluated; write the value itself instead"
        ) from None


def _refuse_python_tag(loader: _ConfigLoader, suffix: str, node: yaml.Node) -> Any:
    raise ConfigError(
        f"{_where(loader, node)}: the YAML tag !!python/{suffix} is not allowed: config files are read without "
        "running code (only !!python/object/apply:eval with arithmetic is accepted); write the value itself"
    )


_ConfigLoader.add_constructor(EVAL_TAG, _construct_eval)
_ConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/", _refuse_python_tag)


def read_config_yaml(filename: str) -> dict:
    """One config file (no `_BASE_` resolution) as a dict, read with the safe loader; ConfigError naming the file
    and line for a YAML error, a refused tag, a key set twice in one block, or aliases that expand to more than
    MAX_YAML_NODES values (refused before they are expanded). Every YAML file the project reads goes through it."""
    try:
        with open(filename, encoding="utf-8") as stream:
            loader = _ConfigLoader(stream)
            loader.config_file = str(filename)
            try:
                node = loader.get_single_node()
                if node is None:
                    return {}
                _check_expanded_size(node, str(filename))
                data = loader.construct_document(node)
            finally:
                loader.dispose()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{filename}{line}: not valid YAML: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{filename}: not valid YAML: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{filename}: not a UTF-8 text file ({error.reason})") from None
    except RecursionError:
        raise ConfigError(f"{filename}: blocks nested too deeply to be a config; not read") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{filename}: a config file holds KEY: value lines, got a {type(data).__name__}")
    return data


def load_yaml_chain(filename: str, _chain: tuple[str, ...] = ()) -> dict:
    """`filename` merged over its `_BASE_` file(s), as fvcore does (a base path is relative to the file naming it;
    a list of bases is merged in order), every file read by `read_config_yaml`."""
    resolved = os.path.realpath(filename)
    if resolved in _chain:
        raise ConfigError(f"{filename}: its _BASE_ chain comes back to itself; remove the loop")
    if not os.path.isfile(filename):
        named_by = f" (the _BASE_ of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file not found: {filename}{named_by}")
    data = read_config_yaml(filename)
    if BASE_KEY not in data:
        return data
    bases = data.pop(BASE_KEY)
    merged: dict = {}
    for base in bases if isinstance(bases, list) else [bases]:
        if not isinstance(base, str):
            raise ConfigError(f"{filename}: _BASE_ must be a file name or a list of them, got {base!r}")
        if base.startswith(("http://", "https://")):
            raise ConfigError(f"{filename}: _BASE_ {base}: nothing is downloaded; give a local file")
        path = os.path.expanduser(base)
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(filename), path)
        _merge_into(load_yaml_chain(path, (*_chain, resolved)), merged, path)
    _merge_into(data, merged, filename)
    return merged


def _merge_into(source: dict, target: dict, source_file: str, prefix: str = "") -> None:
    for key, value in source.items():
        if isinstance(value, dict) and key in target:
            if not isinstance(target[key], dict):
                raise ConfigError(f"{source_file}: {prefix}{key} is a group of keys here but a value in its _BASE_")
            _merge_into(value, target[key], source_file, f"{prefix}{key}.")
        else:
            target[key] = value
