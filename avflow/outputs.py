"""Outputs that never destroy an input and never exist half-written.

Before any compute a command calls `check_output` on each file or folder it will write: the output must not be
one of the command's inputs (the same path, a symlink or a hard link to it) nor lie inside an input folder, a
file must have a suffix the command can write, and missing parent folders are created. The result is then written
through `staged_file` or `staged_folder`: into a temporary file or folder beside the target, renamed into place
only once complete, and deleted on any failure (Ctrl-C included), so an existing output stays as it was.
"""
import contextlib
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Sequence

from avflow.errors import AvflowError


class OutputError(AvflowError, ValueError):
  """An output that must not or cannot be written: it is an input, its format is unknown, its folder is unusable."""


def _same(a: str, b: str) -> bool:
  """Whether `a` and `b` name the same file or folder (`./x`, symlinks and hard links included)."""
  try:
    return os.path.samefile(a, b)
  except OSError:  # at least one does not exist
    return os.path.realpath(a) == os.path.realpath(b)


def _within(path: str, folder: str) -> bool:
  """Whether `path` is `folder` or lies inside it."""
  current = os.path.realpath(path)
  while True:
    if _same(current, folder):
      return True
    parent = os.path.dirname(current)
    if parent == current:
      return False
    current = parent


def check_output(path: str, inputs: Iterable[str | None] = (), *, suffixes: Sequence[str] = (),
                 entries: Sequence[str] | None = None, replace: bool = True) -> None:
  """Refuses (`OutputError`) an output that would overwrite an input or that cannot be written; creates the
  missing folders above it.

  `inputs`: the command's input files and folders (None and missing ones are skipped); the output may be none of
  them nor lie inside an input folder. `suffixes`: for a file output, the endings the command can write (any when
  empty). `entries`: for a folder output, the paths inside it that the command replaces; none of them may hold an
  input. None means `path` is a file. `replace=False` refuses a file output that exists (its command's `--force`
  replaces it).
  """
  inputs = [p for p in inputs if p and os.path.exists(p)]
  for source in inputs:
    if _same(path, source):
      raise OutputError(f"the output {path} is the input {source}: choose another output")
    if _within(path, source):
      raise OutputError(f"the output {path} lies inside the input {source}: choose another output")
  if entries is None:
    if os.path.isdir(path):
      raise OutputError(f"the output {path} is a folder; give a file name")
    if suffixes and not path.lower().endswith(tuple(suffixes)):
      raise OutputError(f"cannot write {path}: the output must end in {', '.join(suffixes)}")
    if not replace and os.path.lexists(path):
      raise OutputError(f"the output {path} exists; pass --force to replace it")
  else:
    if os.path.exists(path) and not os.path.isdir(path):
      raise OutputError(f"the output {path} is a file; give a folder")
    for entry in entries:
      for source in inputs:
        if _within(source, os.path.join(path, entry)):
          raise OutputError(f"writing {os.path.join(path, entry)} would replace the input {source}")
  folder = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise OutputError(f"cannot create the folder {folder} for {path}: {e.strerror}") from e
  if not os.access(folder, os.W_OK | os.X_OK):
    raise OutputError(f"cannot write into the folder {folder} (permission denied)")


def _temporary_name(path: str, suffix: str = "") -> str:
  folder, name = os.path.split(os.path.abspath(path))
  return os.path.join(folder, f".{name}.{secrets.token_hex(4)}.partial{suffix}")


@contextlib.contextmanager
def staged_file(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path` (same folder and suffix, so writers pick the same format) and renames
  it to `path` once the block completes; on any exception it is deleted and `path` is left as it was. An OSError
  (a full disk, a lost permission) becomes an `OutputError`."""
  temp = _temporary_name(path, os.path.splitext(path)[1])
  try:
    yield temp
    os.replace(temp, path)
  except BaseException as e:
    with contextlib.suppress(FileNotFoundError):
      os.remove(temp)
    if isinstance(e, OSError):
      raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    raise


@contextlib.contextmanager
def staged_folder(path: str, entries: Sequence[str]) -> Iterator[str]:
  """Yields an empty temporary folder beside `path`; once the block completes, each of `entries` (paths relative
  to that folder) the block wrote replaces the same entry of `path`, which is created if missing. Other files in
  `path` stay, and an old entry is removed only after its replacement is complete. On any exception the
  temporary folder is deleted and `path` is left as it was."""
  temp = _temporary_name(path)
  new, old = os.path.join(temp, "new"), os.path.join(temp, "old")
  os.makedirs(new)
  os.mkdir(old)
  try:
    yield new
    for i, entry in enumerate(entries):
      source, target = os.path.join(new, entry), os.path.join(path, entry)
      if not os.path.lexists(source):
        continue
      os.makedirs(os.path.dirname(target), exist_ok=True)
      if os.path.isdir(target) and not os.path.islink(target):  # a folder cannot be replaced in one rename
        os.replace(target, os.path.join(old, str(i)))
      os.replace(source, target)
  finally:
    shutil.rmtree(temp, ignore_errors=True)
