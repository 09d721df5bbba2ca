"""The one base class of the errors a user can fix (bad input, a wrong path, a refused file).

Every such error in the package derives from `UserError`; `mask2former.utils.cli.run_tool` prints it as one line
and exits non-zero. Anything else escaping a tool is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with what the user gave (a file, an item in it, an option); the message names it and says what
    to do."""


# Raised by the standard library for a user's path; a tool's own code raises UserError for everything else.
USER_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
