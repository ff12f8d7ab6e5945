"""vit_jax.planner.fit and .collectives: the sharded step's memory and collectives, against hand counts.

Tiny ViTs on the 8 simulated CPU devices of conftest.py. The collective
bytes read from the compiled HLO must equal the analytic formulas of data
parallelism, FSDP and tensor parallelism; the parameter and optimizer bytes
per device must equal a count made here from the shapes alone.
"""

import dataclasses
import functools
import math

import jax
import pytest

from vit_jax import models, train_step
from vit_jax.budget import hardware
from vit_jax.planner import __main__ as cli
from vit_jax.planner import activations, collectives, fit

N = 8
F32 = 4
BATCH = 32
IMAGE, PATCH = 16, 4
TOKENS = (IMAGE // PATCH)**2 + 1          # 17, with the class token
HIDDEN, MLP, HEADS = 64, 128, 4
MIN_SIZE = 1024                           # fsdp_min_size of the tiny specs


def tiny(num_layers=1, **overrides) -> fit.StepSpec:
  options = dict(hidden_size=HIDDEN, mlp_dim=MLP, num_heads=HEADS,
                 num_layers=num_layers, patch_size=(PATCH, PATCH),
                 dtype='float32')
  kw = dict(model='ViT-Ti/16', batch_size=BATCH, image_size=IMAGE,
            num_classes=10, model_options=options,
            optim=dict(name='adam', weight_decay=0.1, grad_clip_norm=1.0),
            fsdp_min_size=MIN_SIZE)
  kw.update(overrides)
  return fit.StepSpec(**kw)


def param_shapes(num_layers=1):
  spec = tiny(num_layers)
  model = models.get_model(spec.model, spec.num_classes,
                           **dict(spec.model_options))
  return [x.shape for x in jax.tree.leaves(models.param_shapes(model, IMAGE))]


def fsdp_split(shapes, n):
  """(bytes of arrays FSDP shards over n, bytes it replicates), by hand:
  arrays of >= MIN_SIZE elements with a dimension divisible by n shard."""
  sharded = replicated = 0
  for shape in shapes:
    size = math.prod(shape) * F32
    if math.prod(shape) >= MIN_SIZE and any(d % n == 0 for d in shape):
      sharded += size
    else:
      replicated += size
  return sharded, replicated


_MEASURED = {}
_MEASURE = fit.measure


def measured(mesh, num_layers=1, remat='none'):
  """One compile per layout for the whole module."""
  key = (tuple(sorted(mesh.items())), num_layers, remat)
  if key not in _MEASURED:
    _MEASURED[key] = _MEASURE(tiny(num_layers), mesh, N, remat, num_layers)
  return _MEASURED[key]


# ---------------------------------------------------------------- HLO parser


HLO = """HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%body (p: (s32[], f32[256])) -> (s32[], f32[256]) {
  %p = (s32[], f32[256]{0}) parameter(0)
  %x = f32[256]{0} get-tuple-element(%p), index=1
  %ag = f32[256]{0} all-gather(f32[64]{0} %x), channel_id=3, replica_groups=[2,4]<=[8], dimensions={0}
  ROOT %t = (s32[], f32[256]{0}) tuple(%i, %ag)
}

%cond (p: (s32[], f32[256])) -> pred[] {
  ROOT %c = pred[] constant(true)
}

ENTRY %main (g: f32[1000], h: bf16[10,100]) -> f32[125] {
  %g = f32[1000]{0} parameter(0)
  %h = bf16[10,100]{1,0} parameter(1)
  %ar = (f32[1000]{0}, bf16[10,100]{1,0}) all-reduce(f32[1000]{0} %g, bf16[10,100]{1,0} %h), channel_id=1, replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
  %e0 = f32[1000]{0} get-tuple-element(%ar), index=0
  %e1 = bf16[10,100]{1,0} get-tuple-element(%ar), index=1
  %pid = u32[] partition-id()
  %slice = f32[125]{0} fusion(%e0, %pid), kind=kLoop, calls=%fused
  %use = bf16[10,100]{1,0} negate(%e1)
  %a2a = f32[1000]{0} all-to-all(f32[1000]{0} %g), channel_id=2, replica_groups={{0,1},{2,3},{4,5},{6,7}}, dimensions={0}
  %cp = f32[1000]{0} collective-permute-start(f32[1000]{0} %g), channel_id=4, source_target_pairs={{0,1},{1,0}}
  %w = (s32[], f32[256]{0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"12"}}
  ROOT %r = f32[125]{0} copy(%slice)
}
"""


def test_parse_counts_kinds_groups_loops_and_sliced_reductions():
  parsed = collectives.parse(HLO, 8)
  found = {c.name: c for c in parsed}
  # The combined all-reduce: its f32 element is only sliced per partition
  # (a reduce-scatter on TPU/GPU), its bf16 element is used whole.
  rs = [c for c in parsed if c.kind == 'reduce-scatter']
  ar = [c for c in parsed if c.kind == 'all-reduce']
  assert [(c.operand_bytes, c.group) for c in rs] == [(4000, 8)]
  assert [(c.operand_bytes, c.group) for c in ar] == [(2000, 8)]
  assert found['ag'].group == 4 and found['ag'].executions == 12
  assert found['ag'].operand_bytes == 256
  assert found['a2a'].group == 2
  summary = collectives.summarize_hlo(HLO, 8)
  assert summary.bytes_per_device == {
      'all-reduce': 2 * 7 / 8 * 2000,
      'reduce-scatter': 7 / 8 * 4000,
      'all-gather': 12 * 3 * 256,
      'all-to-all': 1 / 2 * 4000,
      'collective-permute': 4000,
  }
  assert summary.count == {'all-reduce': 1, 'reduce-scatter': 1,
                           'all-gather': 12, 'all-to-all': 1,
                           'collective-permute': 1}


def test_parse_refuses_loops_of_unknown_length():
  text = HLO.replace(', backend_config={"known_trip_count":{"n":"12"}}', '')
  with pytest.raises(ValueError, match='no known trip count'):
    collectives.parse(text, 8)


def test_hardware_memory_and_interconnect_per_device():
  v3, v4 = hardware.HARDWARE['v3'], hardware.HARDWARE['v4']
  assert v3.hbm_bytes_per_device == 16 * 2**30      # 32 GiB per 2-core chip
  assert v4.hbm_bytes_per_device == 32 * 2**30      # one megacore device
  assert v3.interconnect_bytes_per_s_per_device == pytest.approx(
      340e12 / 1024 / 2)
  assert hardware.HARDWARE['h100'].interconnect_bytes_per_s_per_device == 450e9
  assert set(hardware.SOURCES) == set(hardware.HARDWARE)


def test_cli_bad_input_is_one_line_and_exit_2(capsys):
  for argv, words in (
      (['--hardware', 'h100', '--chips', '16'], 'several nodes'),
      (['--hardware', 'v3-8', '--mesh', 'data=x'], 'AXIS=INT'),
      (['--hardware', 'v3-7'], 'v3-7'),
      (['--hardware', 'v3-8', '--margin', '1.5'], 'margin'),
      (['--hardware', 'v3-8', '--config', 'nowhere.py'], 'no config file')):
    assert cli.main(['fit', '--model', 'ViT-B/16', '--batch-size', '64',
                     *argv]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and words in err, err


# ------------------------------------------------- compiled steps, 8 devices


def test_data_parallel_all_reduces_the_gradients_once():
  shapes = param_shapes()
  grads = sum(math.prod(s) for s in shapes) * F32
  m = measured({'data': N})
  # One all-reduce of every gradient (and the 4-byte loss, combined with
  # them by XLA): 2 (n-1)/n x the gradient bytes per device.
  assert m['collective_bytes']['all-reduce'] == 2 * (N - 1) / N * (grads + 4)
  assert m['collective_count']['all-reduce'] == 1
  assert sum(m['collective_bytes'].values()) == \
      m['collective_bytes']['all-reduce']


def test_fsdp_gathers_parameters_and_reduce_scatters_gradients():
  sharded, replicated = fsdp_split(param_shapes(), N)
  m = measured({'fsdp': N})
  b = m['collective_bytes']
  # Forward: every sharded parameter is all-gathered once (without remat
  # XLA keeps the gathered copy for the backward pass).
  assert b['all-gather'] == (N - 1) / N * sharded
  # Backward: their gradients are reduce-scattered, the replicated ones
  # all-reduced (plus a few scalars: the loss and the clipping norm).
  assert b['reduce-scatter'] == (N - 1) / N * sharded
  assert 2 * (N - 1) / N * replicated <= b['all-reduce'] < \
      2 * (N - 1) / N * (replicated + 256)


def test_fsdp_with_remat_gathers_block_parameters_again_in_backward():
  spec_shapes = param_shapes()
  sharded, _ = fsdp_split(spec_shapes, N)
  model = models.get_model('ViT-Ti/16', 10, **dict(tiny().model_options))
  block = [x.shape for x in jax.tree.leaves(
      models.param_shapes(model, IMAGE)['Transformer']['encoderblock_0'])]
  block_sharded, _ = fsdp_split(block, N)
  m = measured({'fsdp': N}, remat='full')
  # The rematerialised block recomputes its forward in the backward pass
  # and gathers its parameters a second time.
  assert m['collective_bytes']['all-gather'] == \
      (N - 1) / N * (sharded + block_sharded)
  assert m['collective_bytes']['reduce-scatter'] == (N - 1) / N * sharded


def test_tensor_parallelism_all_reduces_activations():
  data, model_axis = 2, 4
  m = measured({'data': data, 'model': model_axis})
  local_batch = BATCH // data
  activation = local_batch * TOKENS * HIDDEN * F32
  hlo_groups = {}
  compiled, _, _, _ = fit.compile_step(tiny(), {'data': data,
                                                'model': model_axis}, N)
  for c in collectives.parse(compiled.as_text(), N):
    hlo_groups.setdefault(c.group, 0.)
    hlo_groups[c.group] += c.bytes_per_device
  # Per block, over the model axis: forward, the attention output and the
  # MLP output (row-parallel) are summed; backward, the input gradients of
  # the column-parallel query, key, value and MLP Dense_0 are summed.
  per_block = 6 * 2 * (model_axis - 1) / model_axis * activation
  assert hlo_groups[model_axis] == per_block
  assert m['collective_bytes']['all-reduce'] == pytest.approx(
      sum(hlo_groups.values()))


def test_param_and_optimizer_bytes_follow_the_rules_and_fall_with_fsdp():
  shapes = param_shapes()
  total = sum(math.prod(s) for s in shapes) * F32
  sharded, replicated = fsdp_split(shapes, N)
  spec = tiny()
  dp = fit.state_bytes(spec, {'data': N}, N)
  fsdp = fit.state_bytes(spec, {'fsdp': N}, N)
  fsdp4 = fit.state_bytes(spec, {'data': 2, 'fsdp': 4}, N)
  assert dp['params'] == total
  assert fsdp['params'] == sharded / N + replicated
  sharded4, replicated4 = fsdp_split(shapes, 4)
  assert fsdp4['params'] == sharded4 / 4 + replicated4
  # Adam: two moments of the parameters' size, and two int32 step counts
  # (Adam's bias correction and the learning-rate schedule's).
  assert dp['opt_state'] == 2 * total + 8
  assert fsdp['opt_state'] == 2 * (sharded / N + replicated) + 8
  # XLA's own account of the compiled step's inputs agrees: state, step
  # counter and this device's slice of the batch.
  batch = BATCH // N * (IMAGE * IMAGE * 3 + 10) * F32
  for mesh, state in (({'data': N}, dp), ({'fsdp': N}, fsdp)):
    assert measured(mesh)['argument'] == \
        state['params'] + state['opt_state'] + 4 + batch


def test_depth_extrapolation_matches_a_full_compile():
  mesh = {'fsdp': N}
  one, two, three = (measured(mesh, layers) for layers in (1, 2, 3))
  guess = fit._extrapolate(one, two, 1, 2, 3)
  for kind, value in three['collective_bytes'].items():
    assert guess['collective_bytes'][kind] == pytest.approx(value, abs=1e-6)
  assert guess['argument'] == three['argument']
  # Temporaries: linear as long as the peak stays where it is.
  assert guess['temp'] == pytest.approx(three['temp'], rel=0.05)


# ------------------------------------------------- activations, counted


def counted(remat, depth, dtype='float32', micro=BATCH // N, **options):
  """Residual bytes of the tiny model's loss at one device's micro-batch."""
  spec = tiny(depth, model_options=dict(tiny().model_options, dtype=dtype,
                                        num_layers=depth, **options))
  model = fit._model(spec, remat, depth)
  params = models.param_shapes(model, IMAGE)
  loss = train_step.make_loss_fn(model, spec.loss)
  found = activations.residuals(
      loss, params, jax.ShapeDtypeStruct((micro, IMAGE, IMAGE, 3), 'float32'),
      jax.ShapeDtypeStruct((micro, 10), 'float32'), jax.random.key(0))
  return activations.per_device_bytes(found, 1)


@pytest.mark.parametrize('dtype,itemsize', [('float32', 4), ('bfloat16', 2)])
def test_full_remat_keeps_one_block_input_per_layer(dtype, itemsize):
  per_block = counted('full', 3, dtype) - counted('full', 2, dtype)
  assert per_block == BATCH // N * TOKENS * HIDDEN * itemsize
  # Without remat a block keeps far more: among others every head's
  # attention weights (micro x heads x tokens^2).
  plain = counted('none', 3, dtype) - counted('none', 2, dtype)
  assert plain > per_block + BATCH // N * HEADS * TOKENS**2 * itemsize


def test_activation_bytes_extrapolate_exactly_and_split_per_device():
  spec = tiny(3)
  block_params = sum(math.prod(x) for x in param_shapes(2)) - \
      sum(math.prod(x) for x in param_shapes(1))
  for remat in ('none', 'full'):
    got = fit.activation_bytes(spec, {'data': N}, remat)
    assert got.saved == counted(remat, 3)
    assert got.block == counted('none', 3) - counted('none', 2)
  # FSDP without remat keeps every block's gathered parameters.
  assert fit.activation_bytes(spec, {'fsdp': N}, 'none').saved == \
      counted('none', 3) + 3 * block_params * F32
  full = fit.activation_bytes(spec, {'fsdp': N}, 'full')
  assert full.saved == counted('full', 3)
  # Remat recomputes the block's forward, less the input it kept.
  assert full.recomputed == full.block - (counted('full', 3) -
                                          counted('full', 2))
  # Two cotangents of the largest residual in flight: here the MLP's
  # hidden activations (4 images x 17 tokens x 128, float32).
  assert full.cotangents == 2 * BATCH // N * TOKENS * MLP * F32
  # FSDP gathers one block's float32 parameters and its whole gradient.
  assert full.gathered == 2 * block_params * F32
  assert fit.activation_bytes(spec, {'data': N}, 'full').gathered == 0
  # Half the shards, twice the images per device, twice the activations.
  half = fit.activation_bytes(spec, {'data': 4}, 'none')
  assert half.saved == counted('none', 3, micro=BATCH // 4)
  assert half.saved == pytest.approx(
      2 * fit.activation_bytes(spec, {'data': N}, 'none').saved, rel=0.01)


def test_tensor_parallelism_splits_heads_and_mlp_not_the_stream():
  arch = dict(num_heads=HEADS, head_dim=HIDDEN // HEADS, mlp_dim=MLP)
  split = functools.partial(activations.split_by_model_axis, **arch)
  r = activations.Residual
  assert split(r((4, TOKENS, MLP), 2))                    # MLP hidden
  assert split(r((4, TOKENS, HEADS, HIDDEN // HEADS), 2))  # q, k, v
  assert split(r((1, 4, HEADS, TOKENS, TOKENS), 4))       # attention weights
  assert not split(r((4, TOKENS, HIDDEN), 4))             # residual stream
  assert not split(r((4, IMAGE, IMAGE, 3), 4))            # the image
  found = [r((4, TOKENS, MLP), 2), r((4, TOKENS, HIDDEN), 4)]
  assert activations.per_device_bytes(found, 2, **arch) == \
      4 * TOKENS * MLP + 4 * TOKENS * HIDDEN * 4


def test_counted_activations_against_the_cpu_compiler():
  """The count against XLA:CPU's memory analysis of the compiled step.

  Without remat (not scanned, float32), what the compiler keeps per block
  is at most the count (it fuses element-wise ops and recomputes them
  rather than keep them) and not much less. With the layers scanned (the
  one form in which XLA:CPU realises remat), full remat grows the
  compiled step per block by about the one block input the count keeps.
  Both beside the block's share of the gradients, which the compiler
  counts among its temporaries.
  """
  mesh = {'fsdp': N}
  # The compiler's temporaries hold the gradients too: per block, its
  # sharded float32 gradient.
  grads = (fit.state_bytes(tiny(2), mesh, N)['params'] -
           fit.state_bytes(tiny(1), mesh, N)['params'])
  compiled = measured(mesh, 3)['temp'] - measured(mesh, 2)['temp']
  count = (fit.activation_bytes(tiny(3), mesh, 'none').saved -
           fit.activation_bytes(tiny(2), mesh, 'none').saved) + grads
  assert 0.5 * count < compiled <= count
  scanned = tiny(2, model_options=dict(tiny().model_options, scan_layers=True))
  grow = [fit.measure(dataclasses.replace(
      scanned, model_options=dict(scanned.model_options, num_layers=depth)),
      mesh, N, 'full', depth)['temp'] for depth in (2, 4)]
  per_block = (grow[1] - grow[0]) / 2
  kept = BATCH // N * TOKENS * HIDDEN * F32 + grads
  assert per_block == pytest.approx(kept, rel=0.1)


def test_fit_reports_the_miss_and_ranks_layouts(monkeypatch):
  # The compiles of the tests above, reused; a fictitious accelerator whose
  # HBM lies between what data parallelism and FSDP need.
  monkeypatch.setattr(fit, 'measure', lambda spec, mesh, n, remat, layers:
                      dict(measured({k: v for k, v in mesh.items() if v > 1},
                                    layers, remat)))
  small = hardware.Hardware('tiny8', 'Tiny', 1e12, 1, 1, 2**40, 1e9)
  monkeypatch.setitem(hardware.HARDWARE, 'tiny8', small)
  dp_total, fsdp_total = (
      fit.fit_one(tiny(), 'tiny8', mesh, chips=N, compile='never').total_bytes
      for mesh in ({'data': N}, {'fsdp': N}))
  assert fsdp_total < dp_total
  hbm = (dp_total + fsdp_total) / 2 / 0.9
  monkeypatch.setitem(hardware.HARDWARE, 'tiny8',
                      dataclasses.replace(small, hbm_bytes_per_chip=hbm))
  fits = fit.search(tiny(), 'tiny8', chips=N, remats=('none',),
                    meshes=[{'data': N}, {'fsdp': N}])
  assert [f.mesh_name for f in fits] == ['fsdp=8', 'data=8']
  good, bad = fits
  assert good.fits and bad.fits is False
  assert bad.total_bytes == dp_total
  assert bad.miss_bytes == pytest.approx((dp_total - fsdp_total) / 2)
  assert 'does NOT fit' in fit.format_fit(bad)
  assert f'misses by {bad.miss_bytes / 2**30:.2f} GiB' in fit.format_fit(bad)
  # Only the layout that fits was compiled.
  assert bad.collective_bytes is None and 'not compiled' in fit.format_fit(bad)
  # The total is the sum of its parts: state and gradients from the rules,
  # the batch, and the counted activations.
  assert good.total_bytes == pytest.approx(
      good.params_bytes + good.opt_state_bytes + good.grads_bytes +
      good.batch_bytes + good.saved_bytes + good.working_bytes)
  assert good.grads_bytes == good.params_bytes
  # Predicted time: compute at the stated MFU plus the bytes sent over the
  # interconnect, nothing hidden (overlap 0).
  assert good.step_s == pytest.approx(
      good.compute_s + good.collective_total / 1e9)
  assert good.compute_s == pytest.approx(
      good.flops_per_step / N / (1e12 * fit.DEFAULT_MFU))
  assert good.collective_total == sum(
      measured({'fsdp': N})['collective_bytes'].values())


def test_search_accumulates_gradients_when_no_layout_fits(monkeypatch):
  small = hardware.Hardware('tiny8', 'Tiny', 1e12, 1, 1, 2**40, 1e9)
  monkeypatch.setitem(hardware.HARDWARE, 'tiny8', small)
  whole, halves = (
      fit.fit_one(dataclasses.replace(tiny(), accum_steps=k), 'tiny8',
                  {'data': N}, chips=N, compile='never') for k in (1, 2))
  # Half the images per micro-batch: half the activations, and a second
  # gradient tree (the running sum).
  assert halves.saved_bytes == pytest.approx(whole.saved_bytes / 2, rel=0.05)
  assert halves.grads_bytes == 2 * whole.grads_bytes
  assert halves.total_bytes < whole.total_bytes
  hbm = (halves.total_bytes + whole.total_bytes) / 2 / 0.9
  monkeypatch.setitem(hardware.HARDWARE, 'tiny8',
                      dataclasses.replace(small, hbm_bytes_per_chip=hbm))
  fits = fit.search(tiny(), 'tiny8', chips=N, remats=('none',),
                    meshes=[{'data': N}], compile='never')
  assert [(f.accum_steps, f.fits) for f in fits] == [(2, True), (1, False)]
  assert fit.summary_line(fits[0]).startswith(
      'ViT-Ti/16, tiny8, data=8, remat=none, accum=2: fits at')


def test_h14_without_fsdp_misses_16gb_and_fits_with_fsdp():
  """ViT-H/14 with the pretraining recipe's Adam on v3 cores (16 GiB each).

  128 images per core, as batch 4096 on a v3-32 (here batch 1024 on the 8
  simulated cores of a v3-8), full remat. Without FSDP, float32 parameters,
  gradients and the two Adam moments of 632M parameters take 10.1 GB per
  core; with the activations the step misses 16 GiB, and the fit reports by
  how much. With FSDP over the slice those bytes shrink 8-fold and it fits.
  """
  config = cli._load_config('configs/pretrain.py:model=H/14,dataset=jft,batch=1024')
  spec = fit.spec_from_config(config)
  assert spec.optim['name'] == 'adam' and spec.num_layers == 32
  dp = fit.fit_one(spec, 'v3-8', {'data': N}, remat='full', compile='never')
  assert dp.fits is False
  assert dp.params_bytes + dp.opt_state_bytes + dp.grads_bytes > 16 * 632e6
  # Full remat keeps one bfloat16 block input per layer: 128 x 257 x 1280.
  assert dp.saved_bytes > 32 * 128 * 257 * 1280 * 2
  assert dp.miss_bytes > 0
  assert f'misses by {dp.miss_bytes / 2**30:.2f} GiB' in fit.format_fit(dp)
  sharded = fit.fit_one(spec, 'v3-8', {'fsdp': N}, remat='full',
                        compile='never')
  assert sharded.fits, fit.format_fit(sharded)
  assert sharded.params_bytes < dp.params_bytes / 7
  assert sharded.opt_state_bytes < dp.opt_state_bytes / 7
  assert sharded.saved_bytes == dp.saved_bytes
  # Without remat the activations alone miss.
  plain = fit.fit_one(spec, 'v3-8', {'fsdp': N}, remat='none',
                      compile='never')
  assert plain.fits is False and plain.saved_bytes > 10 * dp.saved_bytes


def test_plan_with_fit_uses_the_best_layouts_predicted_mfu(monkeypatch,
                                                            capsys):
  best = fit.Fit(
      model='ViT-H/14', hardware='v3-32', num_devices=32, batch_size=4096,
      accum_steps=1, mesh={'data': 4, 'fsdp': 8, 'model': 1}, remat='full',
      params_bytes=1e8, opt_state_bytes=2e8, ema_bytes=0, grads_bytes=1e8,
      batch_bytes=1e8, saved_bytes=3e9, working_bytes=1e10,
      total_bytes=13.1 * 2**30, hbm_bytes=16 * 2**30,
      margin=0.1, collective_bytes={'all-gather': 2**30,
                                    'reduce-scatter': 1.1 * 2**30},
      collective_count={'all-gather': 64, 'reduce-scatter': 1},
      xla_cpu_bytes=5e10,
      compute_s=10., comm_s=1., step_s=11., mfu=0.5, overlap=0.,
      predicted_mfu=0.41, flops_per_step=1e18, compile_s=1.,
      layers_compiled=(1, 2))
  seen = {}

  def fake_fits(args, mfu):
    seen['mfu'] = mfu
    return [best]
  monkeypatch.setattr(cli, '_fits', fake_fits)
  assert cli.main(['plan', '--model', 'ViT-H/14', '--dataset', 'jft-300m',
                   '--epochs', '14', '--batch-size', '4096', '--hardware',
                   'v3-32', '--mfu', '0.5', '--fit']) == 0
  out = capsys.readouterr().out
  assert seen['mfu'] == 0.5
  assert 'at 41.0% MFU' in out
  assert ('fit              ViT-H/14, v3-32, data=4 x fsdp=8, remat=full: '
          'fits at 13.1 GiB/core; 2.10 GiB of collectives per step; '
          'predicted 41% MFU') in out
