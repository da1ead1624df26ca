"""The interface every task implements (`avflow.tasks.get(config)` returns one)."""
import abc
from typing import Any, Callable

import jax


class Task(abc.ABC):
  """A system's batch spec, model, loss, sampler and metrics.

  `headline` names the evaluation metric tables lead with and whether lower is better.
  """
  name: str
  headline: tuple[str, bool]  # (metric in eval.json's "prediction", lower is better)

  @abc.abstractmethod
  def build(self, model_cfg):
    """The Flax module of `config.model`."""

  @abc.abstractmethod
  def frozen_prefixes(self, model_cfg) -> tuple[str, ...]:
    """Parameter path prefixes that stay frozen (pretrained encoders)."""

  @abc.abstractmethod
  def pretrained_encoders(self, model_cfg) -> dict[str, tuple[str, ...]]:
    """The pretrained encoders the model runs ("clip", "clap"), each with the path of its parameter subtree."""

  @abc.abstractmethod
  def describe_conditioning(self, model_cfg) -> str:
    """What the model conditions on, in its paper's terms (tables print it per row)."""

  @abc.abstractmethod
  def abstract_batch(self, config, batch_size: int = 1) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of a model input batch (for `jax.eval_shape`, no data needed)."""

  @abc.abstractmethod
  def init(self, model, key: jax.Array, batch: dict) -> Any:
    """The model's parameters for `batch` (a batch or its `abstract_batch`)."""

  @abc.abstractmethod
  def check_batch(self, config, batch: dict) -> None:
    """A clear `ValueError` when a data batch cannot feed the model `config` builds."""

  @abc.abstractmethod
  def source(self, data_cfg, split: str):
    """Random-access examples of `split` (a Grain data source)."""

  @abc.abstractmethod
  def dataset(self, source, data_cfg, *, batch_size: int, seed: int, train: bool, process_index: int = 0,
              process_count: int = 1):
    """Batches of `source`: infinite and shuffled when `train`, fixed and finite for evaluation."""

  @abc.abstractmethod
  def loss_fn(self, model, config) -> Callable:
    """loss(params, batch, rng) → (loss, {term: value})."""

  @abc.abstractmethod
  def predict_fn(self, model, config) -> Callable:
    """predict(params, batch, stop_after=None) → (prediction, the solver's trajectory or None)."""

  @abc.abstractmethod
  def evaluate(self, predict, params, source, config, workdir: str, step: int) -> dict:
    """Scores predictions on `source`, writes `<workdir>/eval.json` (+ samples) and returns the report."""
