"""The one base class of the errors a user can act on (a bad config, dataset, file or resource).

The command line prints such an error's message and exits with status 2 instead of a traceback.
It lives here, below every other module, so that ``diff-erank`` can catch them all without
importing the modules that raise them (torch, transformers): a table or report job starts in
under a second instead of paying for the model stack it never uses.
"""


class UserError(Exception):
    """An error whose message says what to change; subclasses also keep their builtin base."""


class ConfigError(UserError, ValueError):
    """A configuration that cannot be run; the message names the key and what is allowed.

    Here, not in ``config``, so that the modules ``config`` builds on (``variants``, ``layers``)
    can raise it; ``config`` re-exports it.
    """
