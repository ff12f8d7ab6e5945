"""A transformers ViT checkpoint directory: read it into our layout, or write ours as one.

Reading: config.json + the weights (`weights.read_state_dict`). Writing:
config.json, model.safetensors (float32) and preprocessor_config.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from typing import Any, Mapping, Optional, Sequence, Union

from absl import logging
import numpy as np

from vit_jax.hf_interop import config as hf_config
from vit_jax.hf_interop import weights

PathLike = Union[str, os.PathLike]


def load_released(path: PathLike) -> dict[str, np.ndarray]:
  """Reads a transformers ViT directory into our flat released layout."""
  config = hf_config.read_config(path)
  eps = config.get('layer_norm_eps', 1e-12)
  if eps != hf_config.OUR_LAYER_NORM_EPS:
    logging.info('%s: layer_norm_eps=%g; vit_jax layer norms use %g.', path,
                 eps, hf_config.OUR_LAYER_NORM_EPS)
  return weights.to_released(weights.read_state_dict(path), config, os.fspath(path))


def model_for_checkpoint(path: PathLike) -> hf_config.Architecture:
  """The architecture of a transformers ViT directory (config.json + weights)."""
  config = hf_config.read_config(path)
  state = weights.disk_names(weights.read_state_dict(path))
  arch = hf_config.architecture(config, has_pooler='pooler.dense.weight' in state)
  if 'classifier.weight' in state:
    arch = dataclasses.replace(
        arch, num_classes=int(np.shape(state['classifier.weight'])[0]))
  return arch


def _new_file_mode(path: str) -> int:
  """The permission bits a new file gets here (0666 less the umask): creates `path`."""
  with open(path, 'wb') as f:
    return stat.S_IMODE(os.fstat(f.fileno()).st_mode)


def _write_json(file: str, obj: Any) -> None:
  tmp = f'{file}.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, file)


def save_transformers(out_dir: PathLike, flat: Mapping[str, np.ndarray], *,
                      gelu_approximate: bool,
                      labels: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Writes config.json, model.safetensors (float32) and preprocessor_config.json.

  Returns the config written. `flat` is our released layout (per layer).
  """
  st_numpy = weights.safetensors_numpy()
  out_dir = os.fspath(out_dir)
  config = hf_config.transformers_config(flat, gelu_approximate=gelu_approximate,
                               labels=labels)
  state = {k: v.astype(np.float32) if v.dtype != np.float32 else v
           for k, v in weights.from_released(flat).items()}
  os.makedirs(out_dir, exist_ok=True)
  tmp = os.path.join(out_dir, f'{weights.SAFETENSORS}.tmp')
  mode = _new_file_mode(tmp)
  st_numpy.save_file(state, tmp, metadata={'format': 'pt'})
  os.chmod(tmp, mode)  # safetensors writes through its own 0600 temporary file.
  os.replace(tmp, os.path.join(out_dir, weights.SAFETENSORS))
  _write_json(os.path.join(out_dir, hf_config.CONFIG), config)
  image = config['image_size']
  _write_json(os.path.join(out_dir, hf_config.PREPROCESSOR_CONFIG),
              hf_config.preprocessor_config(hf_config.pair(image, 'image_size')))
  return config

