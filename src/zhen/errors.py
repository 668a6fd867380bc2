"""The one base class of errors a user can fix (a bad config, a missing file, a corrupt model).

The CLI prints their message on one line and exits with status 2; anything else is a bug and
keeps its traceback.
"""


class ZhenError(Exception):
    """Something the user can fix; the message says what and where."""
