"""Expected failures: `python -m avflow` reports them as one line `avflow <command>: <message>`, no traceback."""


class AvflowError(Exception):
  """A failure the user can fix (a bad path, an unreadable file, an existing run); CLI exit status 1."""
  exit_status = 1


class UsageError(AvflowError):
  """Wrong positional arguments; CLI exit status 2, like a bad flag."""
  exit_status = 2
