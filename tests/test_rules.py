"""One rule dialect for every user of parameter names: sharding, weight decay, lr multipliers, freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import models, optim, parallel, rules, sharding_rules


@pytest.fixture(scope='module')
def params():
  model = models.get_model('ViT-Ti/16', 10, hidden_size=16, num_layers=3,
                           mlp_dim=32, num_heads=2, patch_size=4)
  return jax.eval_shape(lambda: model.init(jax.random.key(0),
                                           jnp.zeros((1, 8, 8, 3))))['params']


def _names(tree):
  return [n for n, _ in rules.named_leaves(tree)]


def test_a_pattern_matches_the_whole_name_or_a_slash_bounded_suffix():
  name = 'Transformer/encoderblock_2/MlpBlock_3/Dense_0/kernel'
  for pattern in (name, 'MlpBlock_3/Dense_0/kernel', 'Dense_0/kernel', 'kernel',
                  '.*', 'Transformer/.*', r'encoderblock_\d+/MlpBlock_3/.*'):
    assert rules.matches(pattern, name), pattern
  for pattern in ('Dense_0', 'ernel', 'lpBlock_3/Dense_0/kernel', 'bias',
                  'Transformer'):
    assert not rules.matches(pattern, name), pattern


def test_first_rule_wins_and_the_default_applies_to_the_rest():
  r = rules.Rules([('head/kernel', 1), ('kernel', 2)], what='t', default=0)
  assert r.value('head/kernel') == 1
  assert r.value('embedding/kernel') == 2
  assert r.value('head/bias') == 0


def test_the_same_pattern_selects_the_same_parameters_for_every_user(params):
  pattern = 'MlpBlock_3/Dense_0/kernel'
  expected = [f'Transformer/encoderblock_{i}/MlpBlock_3/Dense_0/kernel'
              for i in range(3)]
  names = _names(params)
  # Weight decay exclusion.
  mask = dict(rules.named_leaves(optim.decay_mask(params, [pattern])))
  assert sorted(n for n in names if not mask[n]) == expected
  # Learning-rate multipliers and freezing.
  mults = dict(rules.named_leaves(optim.lr_multipliers(params, [(pattern, 0.5)])))
  assert sorted(n for n in names if mults[n] == 0.5) == expected
  frozen = dict(rules.named_leaves(optim.lr_multipliers(params, [(pattern, 0.0)])))
  assert sorted(n for n in names if frozen[n] == 0) == expected
  # Sharding (tensor parallelism over 'model' on a 2x4 mesh).
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 1, 'model': 4})
  shardings = dict(rules.named_leaves(parallel.tree_shardings(
      params, mesh, [(pattern, (None, 'model'))])))
  sharded = sorted(n for n in names if 'model' in tuple(shardings[n].spec))
  assert sharded == expected


@pytest.mark.parametrize('user', ['decay', 'lr_mults', 'sharding'])
def test_a_pattern_that_matches_nothing_is_an_error_naming_it(params, user):
  pattern = 'MlpBlock_3/Dense_7/kernel'
  with pytest.raises(ValueError, match=r"pattern 'MlpBlock_3/Dense_7/kernel' "
                     r'matches no parameter name') as err:
    if user == 'decay':
      optim.decay_mask(params, [pattern])
    elif user == 'lr_mults':
      optim.lr_multipliers(params, [(pattern, 2.0)])
    else:
      parallel.tree_shardings(params, parallel.make_mesh({'data': -1}),
                              [(pattern, 'fsdp')])
  assert '\n' not in str(err.value)
  what = {'decay': 'optim.weight_decay_exclude', 'lr_mults': 'optim.lr_mults',
          'sharding': 'sharding.rules'}[user]
  assert str(err.value).startswith(what)


def test_a_pattern_that_is_not_a_regex_is_an_error():
  with pytest.raises(ValueError, match=r"rule pattern '\(kernel' is not a "
                     r'regular expression'):
    rules.Rules([('(kernel', 1)], what='t')


def test_default_rules_match_scanned_and_per_layer_models_alike():
  per_layer = models.get_model('ViT-Ti/16', 10, num_layers=2, hidden_size=16,
                               mlp_dim=32, num_heads=4, patch_size=4)
  scanned = models.get_model('ViT-Ti/16', 10, num_layers=2, hidden_size=16,
                             mlp_dim=32, num_heads=4, patch_size=4,
                             scan_layers=True)
  mesh = parallel.make_mesh({'data': 2, 'fsdp': 1, 'model': 4})
  for model in (per_layer, scanned):
    tree = jax.eval_shape(lambda m=model: m.init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 3))))['params']
    specs = {n: tuple(s.spec) for n, s in rules.named_leaves(
        parallel.tree_shardings(tree, mesh, sharding_rules.default_sharding_rules()))}
    mlp = [s for n, s in specs.items() if n.endswith('MlpBlock_3/Dense_0/kernel')]
    assert mlp and all(s[-1] == 'model' for s in mlp), specs
    np.testing.assert_equal(
        [s for n, s in specs.items() if n.endswith('head/kernel')], [(None, None)])
