"""The per-backend model defaults: bf16 + cuDNN attention with padding on GPU, the paper's elsewhere."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from vit_jax import models
from vit_jax.models import fast_path


def test_gpu_gets_bfloat16_and_cudnn_attention_padded_to_256():
  options = models.backend_defaults({'remat_policy': 'none'}, 'gpu')
  assert options == {'remat_policy': 'none', 'dtype': 'bfloat16',
                     'attention_implementation': 'cudnn',
                     'attention_pad_multiple': 64}
  multiple = options['attention_pad_multiple']
  for tokens, padded in ((197, 256), (257, 320), (577, 640)):  # B/16, H/14, 384
    assert -(-tokens // multiple) * multiple == padded


@pytest.mark.parametrize('backend', ['cpu', 'tpu'])
def test_other_backends_keep_the_papers_defaults(backend):
  assert models.backend_defaults({'dtype': None}, backend) == {}
  model = models.get_model('ViT-B/16', 10,
                           **models.backend_defaults({}, backend))
  assert jnp.dtype(model.dtype) == jnp.float32
  assert model.attention_implementation is None
  assert model.attention_pad_multiple is None


def test_what_the_user_sets_wins_and_float32_keeps_xla_attention():
  assert models.backend_defaults({'dtype': 'float32'}, 'gpu') == {
      'dtype': 'float32'}  # cuDNN's fused kernel takes 16-bit inputs only.
  assert models.backend_defaults(
      {'attention_implementation': 'xla'}, 'gpu') == {
          'attention_implementation': 'xla', 'dtype': 'bfloat16'}
  assert models.backend_defaults(
      {'dtype': 'float16', 'attention_pad_multiple': 128}, 'gpu') == {
          'dtype': 'float16', 'attention_implementation': 'cudnn',
          'attention_pad_multiple': 128}


def test_training_builds_the_backend_default_model(monkeypatch):
  config = ml_collections.ConfigDict(dict(
      name='ViT-Ti/16', dtype=None, attention_implementation=None,
      attention_pad_multiple=None, hidden_size=32, num_layers=1, mlp_dim=64,
      num_heads=2))
  model, _ = models.build(config, 10)
  assert model.attention_implementation is None
  assert jnp.dtype(model.dtype) == jnp.float32
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  model, spec = models.build(config, 10)
  assert jnp.dtype(model.dtype) == jnp.bfloat16
  assert model.attention_implementation == 'cudnn'
  assert model.attention_pad_multiple == 64
  assert spec.hidden_size == 32


def test_the_opt_in_xla_flags_are_known_to_the_installed_xla():
  """XLA refuses unknown XLA_FLAGS at start-up, on any backend."""
  probe = 'import jax.numpy as jnp; print(float(jnp.ones(3).sum()))'
  for flags, ok in ((' '.join(fast_path.XLA_GPU_FLAGS), True),
                    ('--xla_gpu_no_such_flag=true', False)):
    env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=flags)
    proc = subprocess.run([sys.executable, '-c', probe], env=env,
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode == 0 and proc.stdout.strip() == '3.0') == ok, (
        flags, proc.stderr[-500:])
