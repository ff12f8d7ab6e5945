"""The train step on 8 simulated devices: sharding, accumulation, bf16, XLA FLOPs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import budget, models, optim, parallel, train_step
from vit_jax.sharding_rules import default_sharding_rules

SHAPE = (16, 16, 3)
TINY = dict(patch_size=(4, 4), hidden_size=32, num_layers=2, mlp_dim=64,
            num_heads=4)


def _setup(mesh_sizes, *, accum_steps=1, dtype='float32', rules=None,
           devices=None, fsdp_min_size=1, steps=3, optimizer='sgd', **model_kw):
  # SGD by default: Adam divides by sqrt(v), which turns the float noise of
  # gradients that are zero in exact arithmetic (the key bias: softmax ignores
  # it) into full-size steps, so no two reduction orders would agree.
  model = models.get_model('ViT-Ti/16', 10, dtype=dtype, **{**TINY, **model_kw})
  mesh = parallel.make_mesh(mesh_sizes, devices)
  schedule = optim.make_schedule(base_lr=1e-2, total_steps=steps,
                                 warmup_steps=1)
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *SHAPE))))['params']
  tx = optim.make_optimizer({'name': optimizer, 'grad_clip_norm': 1.0,
                             'weight_decay': 1e-4,
                             'weight_decay_exclude': ('.*/bias',)},
                            schedule, abstract)
  state, shardings = train_step.sharded_init(
      model, tx, SHAPE, mesh, rules or default_sharding_rules(), seed=0,
      fsdp_min_size=fsdp_min_size)
  step = train_step.make_train_step(model, tx, mesh, shardings,
                                    accum_steps=accum_steps, schedule=schedule)
  return model, mesh, state, step


def _batches(n, batch=32, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(n):
    yield {'image': rng.uniform(-1, 1, (batch, *SHAPE)).astype(np.float32),
           'labels': np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]}


def _train(mesh_sizes, steps=3, devices=None, **kw):
  _, mesh, state, step = _setup(mesh_sizes, devices=devices, steps=steps, **kw)
  losses = []
  # No implicit host<->device transfer on the hot path: batches go up and
  # metrics come back only explicitly.
  with jax.transfer_guard('disallow'):
    for b in _batches(steps):
      state, m = step(state, parallel.host_to_global(b, mesh))
      losses.append(float(jax.device_get(m['train_loss'])))
  return losses, jax.device_get(state['params']), state


@pytest.fixture(scope='module')
def single_device_run():
  return _train({'data': 1}, devices=jax.devices()[:1])


@pytest.mark.parametrize('mesh_sizes', [{'data': 4, 'fsdp': 2},
                                        {'data': 2, 'model': 4}])
def test_sharded_steps_match_single_device(mesh_sizes, single_device_run):
  _assert_matches(_train(mesh_sizes), single_device_run, mesh_sizes)


def _assert_matches(run, reference, mesh_sizes):
  """Losses and parameters of `run` equal the single-device reference's,
  and the rules really did shard: some parameter is split over fsdp / model."""
  (losses, params, state), (ref_losses, ref_params, _) = run, reference
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(state['params'])}
  axis = 'fsdp' if 'fsdp' in mesh_sizes else 'model'
  assert any(axis in s for s in specs), specs


def test_accumulated_gradients_equal_big_batch(single_device_run):
  ref_losses, ref_params, _ = single_device_run
  losses, params, _ = _train({'data': -1}, accum_steps=4)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_step_tracks_float32(single_device_run):
  ref_losses, _, _ = single_device_run
  losses, params, _ = _train({'data': -1}, dtype='bfloat16')
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  np.testing.assert_allclose(losses, ref_losses, rtol=0.03)


@pytest.mark.parametrize('policy', ['full', 'dots'])
def test_remat_gives_the_same_step(policy, single_device_run):
  ref_losses, ref_params, _ = single_device_run
  losses, params, _ = _train({'data': -1}, remat_policy=policy)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_scanned_layers_train_like_per_layer_ones():
  """Same initial weights in both layouts -> the same losses and weights."""
  losses, params, _ = _train({'data': -1}, steps=3)
  model, mesh, state, step = _setup({'data': -1}, scan_layers=True,
                                    remat_policy='full')
  _, _, start, _ = _setup({"data": -1})
  state['params'] = jax.tree.map(
      lambda x, s: jax.device_put(x, s.sharding),
      models.layers_to_scan(jax.device_get(start['params']), 2),
      state['params'])
  scan_losses = []
  for b in _batches(3):
    state, m = step(state, parallel.host_to_global(b, mesh))
    scan_losses.append(float(m['train_loss']))
  np.testing.assert_allclose(scan_losses, losses, rtol=1e-5, atol=1e-6)
  back = models.scan_to_layers(jax.device_get(state['params']), 2)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_batch_not_divisible_is_a_clear_error():
  mesh = parallel.make_mesh({'data': -1})
  with pytest.raises(ValueError, match='not divisible by accum_steps'):
    parallel.check_batch_divisible(36, 2, mesh)


def test_analytic_flops_match_xla_cost_analysis():
  """3 x forward FLOPs of the formula vs XLA's count of the compiled step."""
  model, mesh, state, step = _setup({'data': 1}, devices=jax.devices()[:1],
                                    patch_size=(2, 2), hidden_size=64,
                                    mlp_dim=256, num_heads=4)
  batch = parallel.host_to_global(next(_batches(1, batch=8)), mesh)
  cost = step.lower(state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  spec = models.get_spec('ViT-Ti/16')
  import dataclasses
  spec = dataclasses.replace(spec, patch_size=(2, 2), hidden_size=64,
                             num_layers=2, mlp_dim=256, num_heads=4)
  analytic = budget.train_flops_per_image(spec, 16, 10) * 8
  # XLA also counts LayerNorm, softmax, GELU and the optimizer update: a few
  # percent above the matmul count, never below it.
  assert analytic <= cost['flops'] <= 1.25 * analytic, (analytic, cost['flops'])


def test_polyak_average_follows_the_parameters():
  model = models.get_model('ViT-Ti/16', 10, **TINY)
  mesh = parallel.make_mesh({'data': -1})
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *SHAPE))))['params']
  tx = optim.make_optimizer({'name': 'sgd'}, lambda s: 0.1, abstract)
  state, shardings = train_step.sharded_init(
      model, tx, SHAPE, mesh, default_sharding_rules(), seed=0, ema=True)
  step = train_step.make_train_step(model, tx, mesh, shardings, ema_decay=0.75,
                                    donate=False)
  p0 = jax.device_get(state['params'])
  state, _ = step(state, parallel.host_to_global(next(_batches(1)), mesh))
  p1 = jax.device_get(state['params'])
  expected = jax.tree.map(lambda a, b: 0.75 * a + 0.25 * b, p0, p1)
  for a, b in zip(jax.tree.leaves(state['ema_params']),
                  jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# Gradient accumulation communicates once per step: the compiled step of
# accum_steps=4 sends what the step of accum_steps=1 sends.

COMPILE_MODEL = dict(hidden_size=64, num_layers=2, mlp_dim=128, num_heads=4,
                     patch_size=(4, 4))


@functools.lru_cache(maxsize=None)
def _collective_bytes(mesh_items, accum_steps, accumulate='local'):
  """Bytes per device of one call of the step, compiled (never run) for a
  small ViT at 32 px, batch 64, on the mesh `dict(mesh_items)`."""
  from vit_jax.planner import collectives, fit
  model = models.get_model('ViT-Ti/16', 10, **COMPILE_MODEL)
  mesh = parallel.make_mesh(dict(mesh_items))
  shape = (32, 32, 3)
  abstract = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape))))['params']
  tx = optim.make_optimizer({'name': 'adam'}, lambda s: 1e-3, abstract)
  state = jax.eval_shape(
      lambda: train_step.init_state(model, tx, shape, seed=0))
  shardings = train_step.state_shardings(state, mesh,
                                         default_sharding_rules(), 1)
  step = train_step.make_train_step(model, tx, mesh, shardings,
                                    accum_steps=accum_steps,
                                    accumulate=accumulate)
  state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state, shardings)
  rows = parallel.batch_sharding(mesh)
  batch = {'image': jax.ShapeDtypeStruct((64, *shape), jnp.float32,
                                         sharding=rows),
           'labels': jax.ShapeDtypeStruct((64, 10), jnp.float32,
                                          sharding=rows)}
  compiled = step.lower(state, batch).compile(dict(fit.FAST_COMPILE))
  return collectives.summarize_hlo(compiled.as_text(),
                                   8).total_bytes_per_device


@pytest.mark.parametrize('mesh_sizes', [{'data': 8}, {'fsdp': 8},
                                        {'data': 4, 'model': 2}])
def test_accumulation_sends_the_bytes_of_one_step(mesh_sizes):
  one = _collective_bytes(tuple(mesh_sizes.items()), 1)
  four = _collective_bytes(tuple(mesh_sizes.items()), 4)
  assert one > 0
  # No more than one step (up to the scalar all-reduces of the loss and
  # metrics: 1 KiB) and not less than the one gradient reduction (accum=1
  # gathers a few small FSDP vectors twice, forward and backward: 0.2%).
  assert 0.99 * one <= four <= one + 1024, (mesh_sizes, one, four)


def test_reduced_accumulation_reduces_every_micro_batch():
  """accumulate='reduced' (sharded accumulator, for memory) pays a gradient
  reduction per micro-batch."""
  mesh = (('fsdp', 8),)
  one = _collective_bytes(mesh, 1)
  assert _collective_bytes(mesh, 4, 'reduced') > 2.5 * one


@pytest.mark.parametrize('mesh_sizes', [{'fsdp': 8}, {'data': 4, 'model': 2}])
def test_local_accumulation_equals_big_batch(mesh_sizes, single_device_run):
  _assert_matches(_train(mesh_sizes, accum_steps=4), single_device_run,
                  mesh_sizes)


def test_unknown_accumulate_is_a_clear_error():
  model = models.get_model('ViT-Ti/16', 10, **TINY)
  mesh = parallel.make_mesh({'data': -1})
  with pytest.raises(ValueError, match="accumulate='both' is not one of"):
    train_step.make_train_step(model, None, mesh, {}, accum_steps=2,
                               accumulate='both')


def test_each_shard_draws_its_own_dropout_key():
  """Micro-batch j of shard s uses fold_in(fold_in(rng, j), s): the shards'
  masks differ, and a resumed run draws the same ones."""
  mesh = parallel.make_mesh({'data': 4, 'fsdp': 2})

  def grad_fn(params, x, y, key):
    return jnp.sum(x), {'w': params['w'] + jax.random.uniform(key, ())}
  replicated = {'w': parallel.replicated(mesh)}
  f = jax.jit(train_step._local_accumulation(grad_fn, mesh, replicated, 2))
  rng = jax.random.key(3)
  rows = jnp.ones((16, 1))
  loss, grads = f({'w': jnp.zeros(())}, rows, rows, rng)
  expected = np.mean([
      jax.random.uniform(jax.random.fold_in(jax.random.fold_in(rng, j), s), ())
      for j in range(2) for s in range(8)])
  assert float(loss) == 1.0  # The mean of each micro-batch's row sums.
  np.testing.assert_allclose(grads['w'], expected, rtol=1e-6)
