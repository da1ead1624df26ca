"""Expected failures: `python -m avflow` reports them as one line `avflow <command>: <message>`, no traceback."""


class AvflowError(Exception):
  """A failure the user can fix (a bad path, an unreadable file, an existing run); CLI exit status 1."""
  exit_status = 1


class UsageError(AvflowError):
  """Wrong positional arguments; CLI exit status 2, like a bad flag."""
  exit_status = 2


class RunNotFoundError(AvflowError, FileNotFoundError):
  """A run directory that is missing, or lacks its config or a complete checkpoint."""


class RunExistsError(AvflowError, FileExistsError):
  """A new run asked for in a directory that already holds one."""
