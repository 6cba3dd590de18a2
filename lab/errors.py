"""The two errors a user can fix, each shown as one line with exit code 2 (lab.cli.run_cli)."""


class UserError(Exception):
    """A problem the user can fix (bad flag, missing or corrupt file): one line, exit code 2."""


class DataError(Exception):
    """The data could not be found or read; the message says what and where."""
