"""The one error class users see: the CLI prints its message on one line and exits with code 2."""


class NinError(Exception):
    """A problem with the user's input (names, files, settings), with what was expected and what to do."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run after a checkpoint; ``nin train --resume`` continues it (exit 75)."""
