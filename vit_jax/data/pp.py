"""Preprocessing strings -> ops: presets expanded, every built-in op registered.

`parse_pp('decode|inception_crop(224)|flip_lr|value_range(-1, 1)')` returns
the example ops and the batch ops (Mixup) of a pipeline. Importing this module
registers the built-in ops (ops.py, label_ops.py, randaugment.py, mixup.py and
the VTAB label op of vtab_tasks.py) with the registry.
"""

from __future__ import annotations

from typing import Sequence, Union

# The op modules register themselves on import.
from vit_jax.data import label_ops, mixup, ops, randaugment, vtab_tasks  # pylint: disable=unused-import
from vit_jax.data import presets
from vit_jax.data.registry import Op, build_op, parse_call


def _split_ops(pp: Union[str, Sequence[str]]) -> list[str]:
  if isinstance(pp, str):
    parts = pp.split('|')
  else:
    parts = [p for item in pp for p in str(item).split('|')]
  parts = [p.strip() for p in parts]
  if any(not p for p in parts):
    raise ValueError(f'Empty op in pp {pp!r}: remove the doubled or trailing "|".')
  return parts


def _fuse_decode_and_crop(texts: list[str]) -> list[str]:
  """'decode' then 'inception_crop(...)' -> 'decode_jpeg_and_inception_crop(...)'."""
  out = []
  for text in texts:
    if out and out[-1] == 'decode' and parse_call(text)[0] == 'inception_crop':
      out[-1] = 'decode_jpeg_and_inception_crop' + text[len('inception_crop'):]
    else:
      out.append(text)
  return out


def parse_pp(pp: Union[str, Sequence[str]]) -> tuple[list[Op], list[Op]]:
  """Parses `pp` into (example ops, batch ops); batch ops must come last."""
  texts = _fuse_decode_and_crop(_split_ops(presets.expand(pp)))
  ops = [build_op(text) for text in texts]
  first_batch = next((i for i, op in enumerate(ops) if op.is_batch_op), len(ops))
  late = [op.spec for op in ops[first_batch:] if not op.is_batch_op]
  if late:
    raise ValueError(f'Batch op {ops[first_batch].spec!r} must come after every '
                     f'example op, but {", ".join(late)} follow it; move it to the end.')
  return ops[:first_batch], ops[first_batch:]
