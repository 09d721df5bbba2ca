"""Plug-ins in child processes. A plug-in registers itself when an entry point imports it (train_net.py and the
tools import `semask`); a command the pipeline starts as `python -m mask2former.commands.<name>` imports the
plug-ins its parent had, which the parent names in the environment variable TRASHSEG_PLUGINS."""

from __future__ import annotations

import importlib
import os

from .defaults import PLUGIN_CONFIG_ADDERS

PLUGINS_VARIABLE = "TRASHSEG_PLUGINS"


def loaded_plugins() -> list[str]:
    """The top-level packages of the plug-ins registered in this process (each registers its config keys)."""
    return sorted({adder.__module__.split(".")[0] for _, adder in PLUGIN_CONFIG_ADDERS})


def environment_with_plugins() -> dict[str, str]:
    """This process's environment plus TRASHSEG_PLUGINS naming its plug-ins: what a child command is started with."""
    return {**os.environ, PLUGINS_VARIABLE: ",".join(loaded_plugins())}


def import_plugins_from_environment() -> list[str]:
    """Import the plug-ins TRASHSEG_PLUGINS names (comma-separated); returns their names."""
    names = [name.strip() for name in os.environ.get(PLUGINS_VARIABLE, "").split(",") if name.strip()]
    for name in names:
        importlib.import_module(name)
    return names
