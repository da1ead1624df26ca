"""Tasks: what one system trains on, optimises and is scored by, behind one interface.

`train`, `eval`, `ablate`, `bench` and `info` ask `get(config)` for the task named by `config.task` and use only the
`Task` methods, so a new system adds a task module here instead of branches there.
  flow, regression  highlight (VisAH-FM, VisAH): a poorly balanced mix x0 → the well-balanced x1
  separate          separation (DAVIS-Flow, DAVIS): a mixture and one video's frames → that video's sound
  v2a               video-to-audio generation (VAFlow): a clip's frames → its audio
  nag               step-by-step video-to-audio (NAG): a clip's frames and one caption per track → K tracks
"""
import importlib

from avflow.tasks.base import Task

# config.task → (module under avflow.tasks, its Task), imported on first use so that one system never loads another.
TASKS = {"flow": ("highlight", "FLOW"), "regression": ("highlight", "REGRESSION"), "separate": ("separate", "SEPARATE"),
         "v2a": ("v2a", "V2A"), "nag": ("nag", "NAG")}


def get(config) -> Task:
  """The task `config.task` names."""
  if config.task not in TASKS:
    raise ValueError(f"config.task={config.task!r}; expected one of {', '.join(TASKS)}")
  module, name = TASKS[config.task]
  return getattr(importlib.import_module(f"avflow.tasks.{module}"), name)
