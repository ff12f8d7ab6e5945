"""`planner fit` on the TPU compiler: XLA:TPU's memory, collectives and step time beside the analytic count.

Every TPU compile runs in one child process (tpu_compile.py: libtpu stays
out of pytest's process) and is skipped when libtpu is not installed
(`make test` installs it). Nothing executes on a TPU: the step is compiled
for a v3-8's devices and read. The models are small (quickstart width, and
ViT-B/16 cut to 2 blocks) so each compile takes seconds to a minute.
"""

import dataclasses
import json
import textwrap

import pytest

from vit_jax.planner import fit, tpu

import tpu_compile

GiB = 2.**30
#: The quickstart's model at 32 px, Adam (as tests/test_planner_tpu.py).
SMALL = fit.StepSpec(
    model='ViT-Ti/16', batch_size=64, image_size=32, num_classes=10,
    model_options=dict(hidden_size=64, num_layers=4, mlp_dim=128,
                       num_heads=4, patch_size=(4, 4)),
    optim=dict(name='adam', weight_decay=1e-4, grad_clip_norm=1.0),
    fsdp_min_size=1024)
#: The same model at 2**21 images (2**18 per v3 core): its activations alone
#: need tens of GiB per core.
ABSURD = dataclasses.replace(SMALL, batch_size=2**21)
#: ViT-B/16 with 2 blocks at 96 px (37 tokens), bfloat16 as in the
#: pretraining recipe, 4 images per core: its width, its heads, its MLP.
B16 = fit.StepSpec(
    model='ViT-B/16', batch_size=32, image_size=96, num_classes=1000,
    model_options=dict(num_layers=2, dtype='bfloat16'),
    optim=dict(name='adam', weight_decay=1e-4, grad_clip_norm=1.0))
#: (name, spec, mesh, remat, scan_layers) compiled by XLA:TPU for a v3-8
#: (None: fit's default).
CASES = [('small', SMALL, {'data': 8}, 'none', None),
         ('small_fsdp', SMALL, {'fsdp': 8}, 'none', None),
         ('absurd', ABSURD, {'data': 8}, 'none', True),
         ('b16_none_scan', B16, {'data': 8}, 'none', True),
         ('b16_full_scan', B16, {'data': 8}, 'full', True)]

_FITS = '''
    import json, time
    from vit_jax import assembly
    from vit_jax.planner import fit, tpu
    # Keep what the fit compiles, to read it again with tpu.analyze.
    compiled_steps = []
    _compile = assembly.Assembly.compile
    def _keep(self, *args, **kwargs):
      compiled = _compile(self, *args, **kwargs)
      compiled_steps.append(compiled)
      return compiled
    assembly.Assembly.compile = _keep
    fit.use_simulated_devices(8)      # The analytic count's CPU mesh.
    result = {}
    for name, spec, mesh, remat, scan in json.loads(CASES):
      spec = fit.StepSpec.from_dict(spec)
      compiled_steps.clear()
      t0 = time.perf_counter()
      f = fit.fit_one(spec, 'v3-8', mesh, remat=remat,
                      compiler='auto', scan_layers=scan)
      result[name] = dict(
          fit=f.to_dict(), text=fit.format_fit(f),
          table=fit.format_table([f]), summary=fit.summary_line(f),
          wall_s=time.perf_counter() - t0,
          analyze=[tpu.analyze(c).to_dict() for c in compiled_steps])
'''


@pytest.fixture(scope='module')
def fits():
  if not tpu_compile.libtpu_importable():
    pytest.skip('libtpu (the TPU compiler) is not installed; `make test` '
                'installs it')
  cases = json.dumps([(n, s.to_dict(), m, r, scan)
                      for n, s, m, r, scan in CASES])
  return tpu_compile.run(f'CASES = {cases!r}\n' + textwrap.dedent(_FITS),
                         timeout=1800)


@tpu_compile.requires_libtpu
def test_small_fit_reports_xla_tpus_bytes_beside_the_count(fits):
  out = fits['small']
  f, compiled = out['fit'], out['analyze']
  assert f['compiler'] == 'tpu' and f['scan_layers']
  assert f['layers_compiled'] == [4]     # the full depth, once
  assert len(compiled) == 1
  step = compiled[0]
  # The fit's figures are XLA:TPU's memory analysis of the step it compiled.
  for key in ('argument', 'output', 'alias', 'temp'):
    assert f['tpu'][key] == step[f'{key}_bytes'], key
  assert f['tpu_peak_bytes'] == step['peak_bytes']
  assert f['collective_bytes'] == step['collective_bytes']
  assert f['collective_count'] == step['collective_count']
  assert f['collective_bytes']['all-reduce'] > 0     # the gradients
  # Verdict: the compiler's peak against a v3 core's 16 GiB.
  assert f['fits'] is True and f['analytic_fits'] is True
  assert f['hbm_bytes'] == 16 * GiB
  # The analytic count stays beside it, in the report and the table.
  assert f['total_bytes'] > 0 and f['saved_bytes'] > 0
  text = out['text']
  assert 'fits per XLA:TPU' in text and 'analytic count per device' in text
  assert 'full depth (4 blocks), scanned layers' in text
  assert f'peak {step["peak_bytes"] / GiB:.3f} GiB' in text
  assert 'stated-MFU model' in text and 'XLA:TPU step time' in text
  # Time: the cost model, never below the FLOP bound; which one is said.
  assert f['tpu_step_s'] >= f['flop_bound_s'] > 0
  assert f['tpu_time_source'] in ('compiler', 'flop bound')
  if f['tpu_time_source'] == 'compiler':
    assert f['tpu_step_s'] == step['optimal_seconds']
  row = out['table'].splitlines()[2]
  assert f'{step["peak_bytes"] / GiB:.2f} (16.0)' in row
  assert f'{f["total_bytes"] / GiB:.2f}' in row and '4, scanned' in row
  assert 'XLA:TPU' in out['summary']


@tpu_compile.requires_libtpu
def test_fsdp_layouts_compile_unrolled_at_two_depths_by_default(fits):
  # A scanned FSDP step is another program on this libtpu (docs/budget.md),
  # so an FSDP fit compiles unrolled blocks at 1 and 2 and extrapolates.
  f = fits['small_fsdp']['fit']
  assert f['compiler'] == 'tpu' and not f['scan_layers']
  assert f['layers_compiled'] == [1, 2] and len(fits['small_fsdp']['analyze']) == 2
  assert f['fits'] and f['collective_bytes']['all-gather'] > 0
  assert '1 and 2 blocks, extrapolated' in fits['small_fsdp']['text']


@tpu_compile.requires_libtpu
def test_a_step_the_compiler_cannot_fit_is_a_miss_with_its_numbers(fits):
  out = fits['absurd']
  f = out['fit']
  assert f['fits'] is False and f['analytic_fits'] is False
  assert f['tpu']['oom'] is True
  # XLA:TPU's own numbers: what the temporaries need and what HBM it had.
  assert f['tpu']['temp_needed'] > f['tpu']['hbm_available'] > 0
  assert f['tpu']['hbm_available'] <= 16 * GiB
  assert 'RESOURCE_EXHAUSTED' in f['tpu']['message'] or \
      'Ran out of memory' in f['tpu']['message']
  assert f['collective_bytes'] is None and f['tpu_step_s'] is None
  text = out['text']
  assert 'does NOT fit per XLA:TPU, which ran out of HBM' in text
  assert f'{f["tpu"]["temp_needed"] / GiB:.2f} GiB' in text
  assert 'analytic count per device' in text and 'does NOT fit' in text
  assert 'out of HBM: temps' in out['table']
  assert 'does not fit (XLA:TPU ran out of HBM' in out['summary']
  # It fails fast: no compile past the memory assignment.
  assert out['wall_s'] < 300


@tpu_compile.requires_libtpu
def test_b16_activation_count_against_xla_tpus_temporaries(fits):
  """The analytic count is a model of what XLA:TPU keeps (docs/budget.md,
  "Will it fit?"): its activations against the compiler's temporaries at
  4 images per core, 2 scanned blocks, remat none and full."""
  ratios = {}
  for name in ('b16_none_scan', 'b16_full_scan'):
    f = fits[name]['fit']
    assert f['compiler'] == 'tpu' and f['fits'], name
    assert f['layers_compiled'] == [2] and f['scan_layers']
    # Temporaries hold the activations and the gradients (the count's
    # `grads_bytes`), so compare them with those two.
    counted = f['activation_bytes'] + f['grads_bytes']
    ratios[name] = f['tpu']['temp'] / counted
    print(name, f'XLA:TPU temp {f["tpu"]["temp"] / 2**20:.1f} MiB, counted '
          f'activations {f["activation_bytes"] / 2**20:.1f} + gradients '
          f'{f["grads_bytes"] / 2**20:.1f} MiB, ratio {ratios[name]:.2f}, '
          f'peak {f["tpu_peak_bytes"] / 2**20:.1f} MiB vs counted total '
          f'{f["total_bytes"] / 2**20:.1f} MiB, compile {f["compile_s"]:.1f} s')
  for name, ratio in ratios.items():
    assert 0.25 < ratio < 2.0, (name, ratio)
  # Remat saves on the compiler too.
  assert (fits['b16_full_scan']['fit']['tpu']['temp'] <
          fits['b16_none_scan']['fit']['tpu']['temp'])


def test_compiler_choice_and_slice_names(monkeypatch):
  assert fit.tpu_slice_name('v3-8') == 'v3-8'
  assert fit.tpu_slice_name('v3', 4) == 'v3-8'       # cores on v3
  assert fit.tpu_slice_name('v4', 16) == 'v4-32'
  assert fit.tpu_slice_name('v5e', 16) == 'v5e-16'   # chips on v5e
  assert fit.tpu_slice_name('h100', 8) is None
  assert fit.choose_compiler('h100', 8) == 'cpu'
  assert fit.choose_compiler('v3-8', compiler='cpu') == 'cpu'
  with pytest.raises(ValueError, match='not one'):
    fit.choose_compiler('h100', 8, compiler='tpu')
  with pytest.raises(ValueError, match='compiler must be'):
    fit.choose_compiler('v3-8', compiler='gpu')
  # Without libtpu, 'auto' falls back to the count; 'tpu' says how to get it.
  monkeypatch.setattr(tpu, 'libtpu_available', lambda: False)
  assert fit.choose_compiler('v3-8') == 'cpu'
  with pytest.raises(ValueError, match='libtpu'):
    fit.choose_compiler('v3-8', compiler='tpu')
