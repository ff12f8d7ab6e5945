"""vit_jax.budget.fit and .collectives: the sharded step's memory and collectives, against hand counts.

Tiny ViTs on the 8 simulated CPU devices of conftest.py. The collective
bytes read from the compiled HLO must equal the analytic formulas of data
parallelism, FSDP and tensor parallelism; the parameter and optimizer bytes
per device must equal a count made here from the shapes alone.
"""

import dataclasses
import math

import jax
import pytest

from vit_jax import models
from vit_jax.budget import __main__ as cli
from vit_jax.budget import collectives, fit, hardware

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


def test_fit_reports_the_miss_and_ranks_layouts(monkeypatch):
  # The compiles of the tests above, reused; a fictitious accelerator whose
  # HBM lies between what data parallelism and FSDP need.
  monkeypatch.setattr(fit, 'measure', lambda spec, mesh, n, remat, layers:
                      dict(measured({k: v for k, v in mesh.items() if v > 1},
                                    layers, remat)))
  dp_total = fit._total(measured({'data': N}))
  fsdp_total = fit._total(measured({'fsdp': N}))
  assert fsdp_total < dp_total
  hbm = (dp_total + fsdp_total) / 2 / 0.9
  small = hardware.Hardware('tiny8', 'Tiny', 1e12, 1, 1, hbm, 1e9)
  monkeypatch.setitem(hardware.HARDWARE, 'tiny8', small)
  fits = fit.search(tiny(), 'tiny8', chips=N, remats=('none',),
                    meshes=[{'data': N}, {'fsdp': N}])
  assert [f.mesh_name for f in fits] == ['fsdp=8', 'data=8']
  good, bad = fits
  assert good.fits and bad.fits is False
  assert bad.total_bytes == dp_total
  assert bad.miss_bytes == pytest.approx((dp_total - fsdp_total) / 2)
  assert 'does NOT fit' in fit.format_fit(bad)
  assert f'misses by {bad.miss_bytes / 2**30:.2f} GiB' in fit.format_fit(bad)
  # Predicted time: compute at the stated MFU plus the bytes sent over the
  # interconnect, nothing hidden (overlap 0).
  assert good.step_s == pytest.approx(
      good.compute_s + good.collective_total / 1e9)
  assert good.compute_s == pytest.approx(
      good.flops_per_step / N / (1e12 * fit.DEFAULT_MFU))
  assert good.collective_total == sum(
      measured({'fsdp': N})['collective_bytes'].values())


def test_h14_without_fsdp_misses_16gb_and_fits_with_fsdp():
  """ViT-H/14 with the pretraining recipe's Adam on v3 cores (16 GiB each).

  128 images per core, as batch 4096 on a v3-32 (here batch 1024 on the 8
  simulated cores of a v3-8). Without FSDP, float32 parameters, gradients
  and the two Adam moments of 632M parameters take 10.1 GB per core, and
  with the activations the step misses 16 GiB, and the fit reports by how
  much (a lower bound when the 1-block compile already misses).
  With FSDP over the slice those bytes shrink 8-fold, and with gradient
  accumulation (64 micro-batches of 2 images per core) the activations fit
  too, even as the CPU compiler counts them (docs/budget.md).
  """
  config = cli._load_config('configs/pretrain.py:model=H/14,dataset=jft,batch=1024')
  spec = fit.spec_from_config(config)
  assert spec.optim['name'] == 'adam' and spec.num_layers == 32
  dp = fit.fit_one(spec, 'v3-8', {'data': N}, remat='full')
  assert dp.fits is False
  assert dp.params_bytes + dp.opt_state_bytes > 12 * 632e6
  assert dp.miss_bytes > 0
  assert 'misses by' in fit.format_fit(dp)
  accumulated = dataclasses.replace(spec, accum_steps=64)
  sharded = fit.fit_one(accumulated, 'v3-8', {'fsdp': N}, remat='full')
  assert sharded.fits, fit.format_fit(sharded)
  assert sharded.params_bytes < dp.params_bytes / 7
  assert sharded.opt_state_bytes < dp.opt_state_bytes / 7


def test_plan_with_fit_uses_the_best_layouts_predicted_mfu(monkeypatch,
                                                            capsys):
  best = fit.Fit(
      model='ViT-H/14', hardware='v3-32', num_devices=32, batch_size=4096,
      mesh={'data': 4, 'fsdp': 8, 'model': 1}, remat='full',
      params_bytes=1e8, opt_state_bytes=2e8, ema_bytes=0, batch_bytes=1e8,
      temp_bytes=1.3e10, total_bytes=13.1 * 2**30, hbm_bytes=16 * 2**30,
      margin=0.1, collective_bytes={'all-gather': 2**30,
                                    'reduce-scatter': 1.1 * 2**30},
      collective_count={'all-gather': 64, 'reduce-scatter': 1},
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
