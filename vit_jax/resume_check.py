"""Refuses to resume a workdir with a config that differs in more than a resume may change.

A resumed run compares its config with the workdir's config.json (written by
the run that made the checkpoints). Keys a resume may change: the total
steps, logging and checkpoint cadence, evaluation cadence, the compute
budget and the rollback step. Any other difference is refused with the keys
listed, unless `allow_config_change=True` is passed. A key the stored
config lacks (a newer version added it) is no difference while it holds
its schema default: the run that wrote config.json behaved that way.
"""

from __future__ import annotations

import fnmatch
import json
import os
from typing import Any

from etils import epath

from vit_jax import config_lib
from vit_jax import workdir as workdir_lib

#: Flattened config keys (fnmatch patterns) a resume may change.
RESUMABLE_KEYS = ('total_steps', 'log_every', 'checkpoint_every',
                  'keep_checkpoints', 'keep_checkpoint_every', 'evals.*.every',
                  'budget.*', 'resume_from_step', 'allow_config_change',
                  'export_npz', 'profile.*')


def flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  """{'a.b': leaf} with JSON values (tuples as lists)."""
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(flatten(v, f'{prefix}{k}.'))
    return out
  return {prefix[:-1]: tree}


def _plain(config_dict: dict) -> dict:
  return json.loads(json.dumps(config_dict, default=str))


def changed_keys(stored: dict, current: dict) -> list[str]:
  """Keys whose values differ (or exist on one side only), sorted; a key
  only `current` has, at the schema's default, is not a difference."""
  a, b = flatten(_plain(stored)), flatten(_plain(current))
  defaults = flatten(_plain(config_lib.base_config().to_dict()))
  return sorted(k for k in set(a) | set(b) if a.get(k, ...) != b.get(k, ...)
                and not (k not in a and k in defaults and
                         b.get(k) == defaults[k]))


def check_resume_config(workdir: str, config: Any) -> None:
  """One-line ValueError if resuming `workdir` with `config` changes the recipe.

  Does nothing for a workdir without checkpoints or without config.json.
  """
  path = epath.Path(workdir) / workdir_lib.CONFIG
  checkpoints = epath.Path(workdir) / workdir_lib.CHECKPOINTS
  if not path.exists() or not checkpoints.exists() or not any(
      p.name.isdigit() for p in checkpoints.iterdir()):
    return
  try:
    stored = json.loads(path.read_text())
  except ValueError:
    raise ValueError(f'{os.fspath(path)} is not valid JSON; restore it or '
                     f'pass --config.allow_config_change=true.') from None
  current = config.to_dict()
  if current.get('allow_config_change'):
    return
  changed = [k for k in changed_keys(stored, current)
             if not any(fnmatch.fnmatchcase(k, p) for p in RESUMABLE_KEYS)]
  if changed:
    shown = ', '.join(changed[:8]) + (', ...' if len(changed) > 8 else '')
    raise ValueError(
        f'the config differs from the one that made the checkpoints in '
        f'{workdir} ({len(changed)} key(s): {shown}); use another --workdir, '
        f'or pass --config.allow_config_change=true to resume anyway.')
