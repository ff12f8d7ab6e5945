"""Parity with timm: files written by save_npz load into timm's ViTs, same logits.

timm (an independent PyTorch implementation) reads our .npz with its own
loader for the released Google checkpoints (`VisionTransformer.load_pretrained`
-> `_load_weights`); equal logits on random images prove that our layout, key
names, kernel shapes and forward pass are those of the released models. timm
is part of the test extras (`make test` installs it): if it is missing, the
test fails rather than skips.

timm uses the exact GELU; ours defaults to flax's tanh approximation (what the
released weights were trained with). Parity is asserted with
`gelu_approximate=False`; the gap of the default is measured and reported
(printed, and recorded as a junit property).
"""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from vit_jax import checkpoint
from vit_jax.models import get_model, param_shapes

NUM_CLASSES = 1000
# (our name, timm's name, image size)
CASES = [
    ('ViT-Ti/16', 'vit_tiny_patch16_224', 224),
    ('ViT-S/16', 'vit_small_patch16_224', 224),
    ('ViT-Ti/16', 'vit_tiny_patch16_384', 384),
    ('R+ViT-Ti/16', 'vit_tiny_r_s16_p8_224', 224),
]
TOLERANCE = 1e-4

# Runs in its own process: torch must not share a process with TensorFlow,
# which other tests may have imported.
_TIMM_SCRIPT = r'''
import json, sys
import numpy as np
import torch
import timm

torch.set_num_threads(1)  # 2 threads spin against the other test worker (2 cores): ~1.5x slower
for job in json.loads(sys.argv[1]):
  # weight_init='skip': no truncated-normal init of weights that load_pretrained
  # overwrites anyway (seconds for ViT-S on CPU).
  model = timm.create_model(job['timm_name'], pretrained=False,
                            num_classes=job['num_classes'], weight_init='skip')
  model.load_pretrained(job['npz'])
  model.eval()
  images = torch.from_numpy(np.load(job['images'])).permute(0, 3, 1, 2)
  with torch.no_grad():
    logits = model(images).numpy()
  np.save(job['logits'], logits.astype(np.float32))
'''


def _random_params(shapes, seed):
  """Random values in every parameter (scales near 1, biases and head too)."""
  rng = np.random.default_rng(seed)

  def leaf(path, struct):
    names = [p.key for p in path]
    shape = struct.shape
    if names[-1] == 'scale':
      value = 1. + 0.1 * rng.standard_normal(shape)
    elif names[-1] in ('bias', 'cls', 'pos_embedding'):
      value = (0.1 if names[-1] == 'bias' else 0.5) * rng.standard_normal(shape)
    else:  # kernels: unit-variance activations
      qkv = len(names) > 1 and names[-2] in ('query', 'key', 'value')
      fan_in = shape[0] if qkv else math.prod(shape[:-1])
      value = rng.standard_normal(shape) / math.sqrt(fan_in)
    return value.astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _our_logits(name, size, params, images, gelu_approximate):
  model = get_model(name, NUM_CLASSES, scan_layers=True,
                    gelu_approximate=gelu_approximate)
  scanned = checkpoint.load_pretrained(params, param_shapes(model, size),
                                       keep_head=True)
  return np.asarray(jax.jit(model.apply)({'params': scanned}, images))


@pytest.fixture(scope='module')
def parity_runs(tmp_path_factory):
  """Writes one file per case, runs timm on all of them in one subprocess."""
  root = tmp_path_factory.mktemp('timm_parity')
  runs, jobs = {}, []
  for i, (name, timm_name, size) in enumerate(CASES):
    model = get_model(name, NUM_CLASSES, gelu_approximate=False)
    params = _random_params(param_shapes(model, size), seed=i)
    images = np.random.default_rng(100 + i).uniform(
        -1., 1., (2, size, size, 3)).astype(np.float32)
    job = {'timm_name': timm_name, 'num_classes': NUM_CLASSES,
           'npz': str(root / f'{i}.npz'), 'images': str(root / f'{i}_x.npy'),
           'logits': str(root / f'{i}_timm.npy')}
    checkpoint.save_npz(job['npz'], params)
    np.save(job['images'], images)
    runs[timm_name] = (name, size, params, images, job['logits'])
    jobs.append(job)
  env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
  result = subprocess.run([sys.executable, '-c', _TIMM_SCRIPT, json.dumps(jobs)],
                          capture_output=True, text=True, env=env, timeout=600)
  if result.returncode:
    pytest.fail(f'timm could not run on our files (is timm installed? '
                f'`make test` installs it):\n{result.stderr[-3000:]}')
  return runs


@pytest.mark.parametrize('timm_name', [c[1] for c in CASES])
def test_timm_reads_our_npz_and_gives_our_logits(parity_runs, timm_name,
                                                 record_property):
  name, size, params, images, logits_file = parity_runs[timm_name]
  theirs = np.load(logits_file)
  exact = _our_logits(name, size, params, images, gelu_approximate=False)
  approx = _our_logits(name, size, params, images, gelu_approximate=True)
  assert exact.shape == theirs.shape == (2, NUM_CLASSES)
  assert float(np.std(theirs)) > 0.3  # informative logits, not a zero head
  exact_err = float(np.max(np.abs(exact - theirs)))
  approx_err = float(np.max(np.abs(approx - theirs)))
  record_property('max_abs_diff_exact_gelu', exact_err)
  record_property('max_abs_diff_tanh_gelu', approx_err)
  print(f'\n{name} at {size} px vs timm {timm_name}: max |logit diff| '
        f'{exact_err:.2e} with exact GELU, {approx_err:.2e} with the default '
        f'tanh-approximate GELU (logit std {np.std(theirs):.2f})')
  assert exact_err <= TOLERANCE
  assert approx_err > exact_err  # the approximation is a real difference
