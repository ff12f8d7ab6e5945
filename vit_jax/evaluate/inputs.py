"""Evaluation inputs: what every evaluator's config says about its data.

An evaluator's config names a dataset the way a training config does
(`data=dict(name='cifar100')`, `name='digits'`, `name='folder', root=...`),
a split, and optionally a `pp` string; `eval_pipeline` turns that into a
`vit_jax.data` evaluation pipeline (padded, masked, every example once across
hosts). The context every evaluator shares (image size, class count, data
directory, processes, where to write) travels in `EvalContext`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, Optional

import jax

from vit_jax import data as data_lib

DEFAULT_BATCH_SIZE = 512


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What the training loop or the CLI knows that evaluators need."""
  image_size: int = 224
  num_classes: Optional[int] = None
  data_dir: Optional[str] = None
  process_index: int = 0
  process_count: int = 1

  @classmethod
  def create(cls, process_index: Optional[int] = None,
             process_count: Optional[int] = None, **kwargs) -> 'EvalContext':
    """Fills in this process's index and the process count from jax."""
    return cls(process_index=(jax.process_index() if process_index is None
                              else process_index),
               process_count=(jax.process_count() if process_count is None
                              else process_count), **kwargs)


def get(config: Any, key: str, default: Any = None) -> Any:
  """config[key] for ConfigDicts and dicts; `default` when absent or None."""
  if config is None:
    return default
  value = config.get(key, default) if hasattr(config, 'get') else getattr(
      config, key, default)
  return default if value is None else value


def as_dict(config: Any) -> dict:
  if config is None:
    return {}
  if hasattr(config, 'to_dict'):
    return config.to_dict()
  return dict(config)


def image_size_of(size: Any) -> int:
  if isinstance(size, (tuple, list)):
    if len(set(size)) != 1:
      raise ValueError(f'evaluation presets need a square image_size, got '
                       f'{tuple(size)}; give the evaluator an explicit pp.')
    size = size[0]
  return int(size)


def split_of(config: Any, default: str) -> str:
  """`config.split`, else `config.data.split`, else `default`."""
  return get(config, 'split', get(get(config, 'data'), 'split', default))


def eval_pipeline(name: str, data: Mapping[str, Any], split: str, pp: str,
                  batch_size: int, context: EvalContext):
  """A `vit_jax.data` EvalPipeline, with errors that name the evaluator."""
  if not get(data, 'name'):
    raise ValueError(f'evaluator {name!r} names no dataset: set '
                     f'evals.{name}.data.name (e.g. "cifar100" or "digits").')
  input_config = {'data': as_dict(data), 'pp': pp,
                  'data_dir': get(data, 'data_dir', context.data_dir)}
  try:
    pipeline = data_lib.build_eval(
        input_config, split, global_batch_size=batch_size,
        process_index=context.process_index,
        process_count=context.process_count)
  except (ValueError, FileNotFoundError) as e:
    raise type(e)(f'evaluator {name!r}: {e}') from None
  # Else a shape error at the first evaluation, after training up to it.
  data_lib.check_image_size(
      pipeline, context.image_size,
      where=f'evals.{name.replace("/", ".datasets.")}.pp')
  return pipeline


def reiterable(pipeline) -> Callable[[], Iterable[dict]]:
  """A function returning a fresh pass over `pipeline` on every call."""
  return lambda: iter(pipeline)
