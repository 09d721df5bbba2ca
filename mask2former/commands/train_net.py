"""`python -m mask2former.commands.train_net ...`: train_net.py, with the plug-ins TRASHSEG_PLUGINS names."""

from ..config.plugins import import_plugins_from_environment
from ..engine.launch import main

# at import, not in main: the ranks of a multi-process run are spawned and import this module again
import_plugins_from_environment()

if __name__ == "__main__":
    main()
