"""The preflight (python -m vit_jax.main --compile_only --topology=SLICE): the job compiled by XLA:TPU on this machine."""

import importlib.util
import math
import os
import subprocess
import sys

import jax
import pytest

import tpu_compile
from vit_jax import assembly, parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, 'configs', 'quickstart.py')


def _main(*flags, timeout=600):
  """`python -m vit_jax.main FLAGS` with libtpu quiet; (status, stdout,
  stderr less libtpu's start-up lines)."""
  proc = subprocess.run([sys.executable, '-m', 'vit_jax.main', *flags],
                        cwd=ROOT, env=tpu_compile.child_env('v3-8'), capture_output=True, text=True,
                        timeout=timeout, check=False)
  return proc.returncode, proc.stdout, tpu_compile.quiet(proc.stderr)


def _quickstart_config():
  spec = importlib.util.spec_from_file_location('quickstart', QUICKSTART)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.num_classes = 10
  return config


@tpu_compile.requires_libtpu
def test_quickstart_on_v3_8_takes_the_state_the_sharding_rules_count():
  result = tpu_compile.run(f'''
      import importlib.util
      from vit_jax import preflight
      spec = importlib.util.spec_from_file_location('q', {QUICKSTART!r})
      q = importlib.util.module_from_spec(spec); spec.loader.exec_module(q)
      config = q.get_config(); config.num_classes = 10
      p = preflight.run(config, 'v3-8')
      result = dict(logical=p.train.logical_argument_bytes,
                    state=p.knobs.state_bytes, fits=p.fits,
                    devices=p.num_devices, step_s=p.step_s, mfu=p.mfu,
                    bound=p.flop_bound_s, report=preflight.format_report(p),
                    eval_peak=p.eval.peak_bytes, peak=p.train.peak_bytes)
  ''')
  # The hand count, on this process's 8 CPU devices: the state's shards by
  # the sharding rules, and one device's rows of the batch.
  config = _quickstart_config()
  asm = assembly.assemble(config, parallel.make_mesh(dict(config.mesh)), 10)
  state = sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
              for x, s in zip(jax.tree.leaves(asm.abstract_state),
                              jax.tree.leaves(asm.shardings)))
  rows = config.batch_size // 8
  batch = rows * (config.image_size**2 * 3 + 10) * 4
  assert result['devices'] == 8
  assert result['state'] == state
  assert result['logical'] == state + batch  # XLA:TPU's arguments, untiled.
  assert result['fits'] is True
  assert result['step_s'] >= result['bound'] > 0
  assert 0 < result['mfu'] < 1
  assert 0 < result['eval_peak'] < result['peak']
  assert 'compiled by XLA:TPU' in result['report']
  assert 'PREFLIGHT fits' in result['report']


@tpu_compile.requires_libtpu
def test_a_job_that_cannot_fit_is_one_line_naming_the_fixes_in_order():
  """ViT-H/14 with Adam at 512 images per v3 core: XLA:TPU refuses it (fast:
  it runs out of HBM before it schedules); the state alone takes half a
  core's HBM, so FSDP comes first."""
  status, out, err = _main(
      '--config=configs/pretrain.py:model=H/14,dataset=jft',
      '--config.model.scan_layers=True', '--config.model.dtype=bfloat16',
      '--config.mesh.data=8', '--compile_only', '--topology=v3-8')
  assert status == 2 and out == ''
  assert len(err.splitlines()) == 1, err
  assert err.startswith('error: ViT-H/14 does not fit v3-8: the training '
                        'step needs ')
  # 655.8M parameters with Adam's two moments, float32, on every device.
  assert 'beside 7.33 GiB of parameters and optimizer state' in err
  fixes = ['--config.mesh.fsdp=8 --config.mesh.data=1',
           '--config.model.remat_policy=full', '--config.accum_steps=2']
  assert [err.index(f) for f in fixes] == sorted(err.index(f) for f in fixes)


@tpu_compile.requires_libtpu
def test_the_fix_the_line_names_first_makes_the_job_fit():
  """The quickstart's blocks stacked 1,600 deep (scanned) at 64 images per
  core miss (XLA:TPU wants ~21 GiB of temporaries); the first fix named
  (remat) fits, as the compiler says. Depth, not batch, makes the miss:
  XLA:TPU's compile time grows with the images per core (65,536 per core:
  ~40 CPU-s for the fix; 64: ~13)."""
  job = [f'--config={QUICKSTART}', '--config.num_classes=10',
         '--config.model.num_layers=1600', '--config.model.scan_layers=True',
         '--config.batch_size=512', '--compile_only', '--topology=v3-8']
  status, out, err = _main(*job)
  assert status == 2 and len(err.splitlines()) == 1, err
  assert 'try in this order: recompute activations in the backward pass ' \
         '(--config.model.remat_policy=full);' in err
  status, out, err = _main(*job, '--config.model.remat_policy=full')
  assert status == 0, err
  assert 'remat=full, on v3-8 (8 devices); compiled by XLA:TPU' in out
  assert out.splitlines()[-1].startswith('PREFLIGHT fits: custom ViT')


@tpu_compile.requires_libtpu
def test_accumulation_sends_what_one_step_sends_on_a_v5e_16():
  """Another generation, XLA:TPU: micro-batches add no traffic. Data
  parallelism sends exactly the bytes of one step whatever accum_steps is;
  under FSDP (every array sharded) the one-step step gathers each layer's
  weights where it uses them, the accumulating step once, so its bytes stay
  below and do not grow with the micro-batches; tensor parallelism
  compiles (its activations' all-reduces are per micro-batch by nature)."""
  out = tpu_compile.run(f'''
      import importlib.util
      from vit_jax import assembly, parallel
      from vit_jax.planner import tpu
      spec = importlib.util.spec_from_file_location('q', {QUICKSTART!r})
      q = importlib.util.module_from_spec(spec); spec.loader.exec_module(q)
      devices = tpu.slice_devices('v5e-16')
      result = {{'kind': devices[0].device_kind}}
      for name, mesh, accums in (('data', dict(data=16, fsdp=1), (1, 4)),
                                 ('fsdp', dict(data=1, fsdp=16), (1, 4, 8)),
                                 ('tp', dict(data=8, fsdp=1, model=2), (4,))):
        for accum in accums:
          config = q.get_config()
          config.num_classes, config.batch_size = 10, 128
          config.accum_steps = accum
          config.mesh.update(mesh)
          config.sharding.fsdp_min_size = 1024
          config.model.num_layers = 1   # one block shows it, at 1/3 the compile
          config.model.remat_policy = 'full'
          asm = assembly.assemble(
              config, parallel.make_mesh(dict(config.mesh), devices), 10,
              backend='tpu')
          step = tpu.analyze(asm.compile())
          result[f'{{name}}/{{accum}}'] = sum(step.collective_bytes.values())
  ''', accelerator='v5e-16')
  assert out['kind'] == 'TPU v5 lite'
  assert out['data/4'] == out['data/1'] > 0
  assert out['fsdp/8'] == out['fsdp/4'] < out['fsdp/1']
  assert out['tp/4'] > 0


@pytest.mark.parametrize('flags, message', [
    (['--topology=v3-8'], '--topology goes with --compile_only'),
    (['--compile_only', '--topology=v3-7'], "'v3-7' is not a TPU slice"),
    (['--compile_only', '--topology=v3-8', '--config.batch_size=12'],
     'batch_size=12 is not divisible'),
])
def test_bad_preflight_flags_are_one_line(flags, message):
  status, out, err = _main(f'--config={QUICKSTART}', *flags)
  assert status == 2 and out == ''
  assert len(err.splitlines()) == 1 and message in err, err
