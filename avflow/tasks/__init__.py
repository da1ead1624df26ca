"""Tasks: what one system trains on, optimises and is scored by, behind one interface.

`train`, `eval`, `ablate`, `bench` and `info` ask `get(config)` for the task named by `config.task` and use only the
`Task` methods, so a new system adds a task module here instead of branches there.
  flow, regression  highlight (VisAH-FM, VisAH): a poorly balanced mix x0 → the well-balanced x1
"""
from avflow.tasks.base import Task


def get(config) -> Task:
  """The task `config.task` names."""
  from avflow.tasks import highlight
  tasks = {"flow": highlight.FLOW, "regression": highlight.REGRESSION}
  if config.task not in tasks:
    raise ValueError(f"config.task={config.task!r}; expected one of {', '.join(tasks)}")
  return tasks[config.task]
