"""The one exception a user's mistake raises.

Every command-line entry point catches `UserError`, prints ``error: <message>`` (one line, no
traceback) and exits 2. The message has the form ``<problem>; <fix>``.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input: ``<problem>; <fix>``; CLIs print it and exit 2."""
