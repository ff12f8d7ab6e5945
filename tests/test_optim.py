"""Schedules, optimizer chains, masks by name, EMA and losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import losses, optim, rules

PARAMS = {
    'embedding': {'kernel': jnp.ones((4, 4, 3, 8)), 'bias': jnp.ones((8,))},
    'Transformer': {
        'posembed_input': {'pos_embedding': jnp.ones((1, 5, 8))},
        'encoder_norm': {'scale': jnp.ones((8,)), 'bias': jnp.ones((8,))},
    },
    'head': {'kernel': jnp.ones((8, 3)), 'bias': jnp.ones((3,))},
}
EXCLUDE = ('bias|scale|cls|pos_embedding',)  # config_lib's default


def test_schedules_warm_up_then_decay():
  s = optim.make_schedule(base_lr=1.0, total_steps=110, warmup_steps=10,
                          decay_type='cosine')
  np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110)],
                             [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
  s = optim.make_schedule(base_lr=1.0, total_steps=110, warmup_steps=10,
                          decay_type='linear', linear_end=0.1)
  np.testing.assert_allclose([s(10), s(60), s(110)], [1.0, 0.55, 0.1], atol=1e-6)
  s = optim.make_schedule(base_lr=1.0, total_steps=1000, warmup_steps=10,
                          decay_type='rsqrt')
  np.testing.assert_allclose([s(10), s(40)], [1.0, 0.5], atol=1e-6)


@pytest.mark.parametrize('kwargs,match', [
    (dict(decay_type='step'), 'unknown decay_type'),
    (dict(warmup_steps=200), 'warmup_steps=200'),
    (dict(total_steps=0), 'total_steps must be positive'),
])
def test_bad_schedules_are_clear_errors(kwargs, match):
  args = dict(base_lr=1.0, total_steps=100, warmup_steps=0)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    optim.make_schedule(**args)


def test_decay_mask_spares_biases_norms_and_position_embeddings():
  mask = optim.decay_mask(PARAMS, EXCLUDE)
  assert mask['embedding']['kernel'] and mask['head']['kernel']
  assert not mask['embedding']['bias']
  assert not mask['Transformer']['encoder_norm']['scale']
  assert not mask['Transformer']['posembed_input']['pos_embedding']


def test_weight_decay_is_decoupled_and_masked():
  tx = optim.make_optimizer({'name': 'sgd', 'momentum': 0.0,
                             'weight_decay': 0.1,
                             'weight_decay_exclude': EXCLUDE},
                            lambda step: 0.5, PARAMS)
  zero = jax.tree.map(jnp.zeros_like, PARAMS)
  updates, _ = tx.update(zero, tx.init(PARAMS), PARAMS)
  # Zero gradients: only the decay moves parameters, by lr * wd * p.
  np.testing.assert_allclose(updates['head']['kernel'], -0.05)
  np.testing.assert_allclose(updates['head']['bias'], 0.0)


def test_lr_multipliers_scale_and_freeze_by_name():
  tx = optim.make_optimizer(
      {'name': 'sgd', 'momentum': 0.0,
       'lr_mults': (('head/.*', 2.0), ('embedding/.*', 0.0))},
      lambda step: 0.1, PARAMS)
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  state = tx.init(PARAMS)
  updates, _ = tx.update(grads, state, PARAMS)
  np.testing.assert_allclose(updates['head']['kernel'], -0.2)
  np.testing.assert_allclose(updates['embedding']['kernel'], 0.0)
  np.testing.assert_allclose(updates['Transformer']['encoder_norm']['scale'], -0.1)
  # Frozen: exactly the parameters the 0 multiplier names.
  assert sorted(n for n, u in rules.named_leaves(updates) if not np.any(u)) == [
      'embedding/bias', 'embedding/kernel']


def test_adam_moments_can_be_bfloat16():
  tx = optim.make_optimizer({'name': 'adam', 'mu_dtype': 'bfloat16'},
                            lambda step: 1e-3, PARAMS)
  state = tx.init(PARAMS)
  mus = [x for x in jax.tree.leaves(state) if getattr(x, 'ndim', 0) > 0]
  assert any(x.dtype == jnp.bfloat16 for x in mus)


def test_unknown_optimizer_is_a_clear_error():
  with pytest.raises(ValueError, match='unknown optimizer'):
    optim.make_optimizer({'name': 'lamb'}, lambda s: 1.0, PARAMS)


def test_losses_against_hand_computed_values():
  logits = jnp.array([[2.0, 0.0, -1.0]])
  labels = jnp.array([[1.0, 0.0, 0.0]])
  expected = -np.log(np.exp(2) / (np.exp(2) + 1 + np.exp(-1)))
  np.testing.assert_allclose(losses.softmax_xent(logits, labels), [expected],
                             rtol=1e-6)
  sig = -(np.log(1 / (1 + np.exp(-2.0))) + np.log(1 - 1 / (1 + np.exp(0.0)))
          + np.log(1 - 1 / (1 + np.exp(1.0))))
  np.testing.assert_allclose(losses.sigmoid_xent(logits, labels), [sig],
                             rtol=1e-6)
  np.testing.assert_allclose(losses.smooth_labels(labels, 0.3),
                             [[0.8, 0.1, 0.1]], rtol=1e-6)
  with pytest.raises(ValueError, match='unknown loss'):
    losses.get_loss('hinge')
