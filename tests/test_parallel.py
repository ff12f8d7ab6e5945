"""Mesh resolution and the regex sharding rules."""

import pytest
from jax.sharding import PartitionSpec as P

from vit_jax import parallel
from vit_jax.sharding_rules import default_sharding_rules


def test_mesh_shape_resolves_the_rest():
  assert parallel.mesh_shape({'data': -1}, 8) == (8, 1, 1)
  assert parallel.mesh_shape({'data': -1, 'fsdp': 2}, 8) == (4, 2, 1)
  assert parallel.mesh_shape({'data': 2, 'model': 4}, 8) == (2, 1, 4)


@pytest.mark.parametrize('sizes,match', [
    ({'data': 3}, 'has 3 devices but 8 are present'),
    ({'data': -1, 'fsdp': 3}, 'does not divide the 8 devices'),
    ({'data': -1, 'fsdp': -1}, 'at most one mesh axis'),
    ({'pipeline': 2}, 'unknown mesh axes'),
])
def test_mesh_that_does_not_fit_is_a_clear_error(sizes, match):
  with pytest.raises(ValueError, match=match):
    parallel.mesh_shape(sizes, 8)


def test_rules_tensor_parallel_fsdp_and_replicate():
  mesh = parallel.make_mesh({'data': 1, 'fsdp': 2, 'model': 4})
  rules = default_sharding_rules()
  q = 'params/Transformer/encoderblock_3/MultiHeadDotProductAttention_1/query/kernel'
  # [D, heads, head_dim]: heads over model, then FSDP on the largest free dim.
  assert parallel.spec_for(q, (768, 12, 64), rules, mesh, 1) == P('fsdp', 'model', None)
  mlp = 'opt_state/0/mu/Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel'
  assert parallel.spec_for(mlp, (3072, 768), rules, mesh, 1) == P('model', 'fsdp')
  # Scanned blocks: the leading layer axis stays unsharded.
  scanned = 'params/Transformer/encoderblock/block/MlpBlock_3/Dense_0/kernel'
  assert parallel.spec_for(scanned, (12, 768, 3072), rules, mesh, 1) == P(None, 'fsdp', 'model')
  # Small arrays stay replicated under the FSDP size threshold.
  assert parallel.spec_for('params/head/bias', (10,), rules, mesh, 2**16) == P(None)
  assert parallel.spec_for('params/embedding/kernel', (16, 16, 3, 768), rules,
                           mesh, 1) == P(None, None, None, 'fsdp')


def test_rule_that_does_not_divide_is_a_clear_error():
  mesh = parallel.make_mesh({'data': 2, 'model': 4})
  q = 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel'
  with pytest.raises(ValueError, match='not divisible by mesh axis'):
    parallel.spec_for(q, (192, 3, 64), default_sharding_rules(), mesh)


def test_host_to_global_builds_the_global_batch():
  import numpy as np
  mesh = parallel.make_mesh({'data': -1})
  x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  g = parallel.host_to_global({'x': x}, mesh)['x']
  assert g.shape == (16, 3) and len(g.sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(g), x)
