"""Parity with Hugging Face transformers' ViT: its checkpoints load into ours, ours into it.

Offline: every transformers model is built locally from a small `ViTConfig`
(B/16-shaped but narrow: width 64, 2 layers, 4 heads, MLP 128, 16x16
patches) and saved with `save_pretrained`. All torch work runs in ONE
subprocess (torch must not share a process with TensorFlow, which other
tests import), which writes its logits to files; this process compares.

Weights are drawn at the scales of trained ViTs (layer-norm scales near 1,
unit-variance activations, class token and position embeddings of std 0.5),
so the logits are informative; one case keeps transformers' own
initialisation (std 0.02), where the layer-norm epsilon gap is largest
(ours is 1e-6, the Hub's ViTs 1e-12) and is measured. Every measured
max |logit diff| is printed and recorded as a junit property.
"""

import json
import math
import os
import re
import stat
import subprocess
import sys

import jax
import numpy as np
import pytest

from vit_jax import checkpoint, export, hf_interop, predict, pretrained
from vit_jax.models import get_model, param_shapes

TOLERANCE = 1e-4
NARROW = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=128, patch_size=16)
OURS_NARROW = dict(hidden_size=64, num_layers=2, num_heads=4, mlp_dim=128)
NUM_CLASSES = 10

# name: (transformers class, config overrides, weights)
IMPORTS = {
    'cls_224': ('cls', dict(image_size=224, hidden_act='gelu'), 'trained'),
    'cls_384': ('cls', dict(image_size=384, hidden_act='gelu_pytorch_tanh'),
                'trained'),
    'pooler_224': ('base', dict(image_size=224, hidden_act='gelu'), 'trained'),
    'hfinit_224': ('cls', dict(image_size=224, hidden_act='gelu'),
                   'transformers'),
}
# name: (image size, representation size, GELU written)
EXPORTS = {
    'plain_224': (224, None, 'tanh'),
    'plain_384': (384, None, 'tanh'),
    'prelogits_224': (224, 48, 'tanh'),
    'prelogits_384': (384, 48, 'tanh'),
    'plain_224_exact_gelu_written': (224, None, 'exact'),
}

_TORCH_SCRIPT = r'''
import json, math, sys
import torch  # before anything that may import TensorFlow
import numpy as np
import transformers
from transformers import (AutoImageProcessor, ViTConfig,
                          ViTForImageClassification, ViTModel)

torch.set_num_threads(1)  # 2 threads spin against the other test worker (2 cores): ~1.5x slower
torch.manual_seed(0)
job = json.loads(open(sys.argv[1]).read())


def trained_like(model, seed):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if 'layernorm' in name and name.endswith('weight'):
        p.copy_(1 + 0.1 * noise)
      elif name.endswith('bias'):
        p.copy_(0.1 * noise)
      elif name.endswith(('cls_token', 'position_embeddings')):
        p.copy_(0.5 * noise)
      else:
        p.copy_(noise / math.sqrt(p[0].numel()))


def outputs(model, images):
  x = torch.from_numpy(np.load(images)).permute(0, 3, 1, 2)
  with torch.no_grad():
    if isinstance(model, ViTForImageClassification):
      return {'logits': model(x).logits.numpy(),
              'cls_hidden': model.vit(x).last_hidden_state[:, 0].numpy()}
    out = model(x)
    return {'pooler': out.pooler_output.numpy(),
            'cls_hidden': out.last_hidden_state[:, 0].numpy()}


report = {}
for i, make in enumerate(job['make']):
  cls = ViTForImageClassification if make['kind'] == 'cls' else ViTModel
  config = ViTConfig(**make['config'])
  model = cls(config).eval()
  if make['weights'] == 'trained':
    trained_like(model, i)
  model.save_pretrained(make['dir'])
  np.savez(make['out'], **outputs(model, make['images']))
  if make.get('eps_probe'):  # the same weights, our layer-norm epsilon
    probe = cls(ViTConfig(**dict(make['config'], layer_norm_eps=1e-6))).eval()
    probe.load_state_dict(model.state_dict())
    np.savez(make['eps_probe'], **outputs(probe, make['images']))
  if make.get('bin_dir'):  # the same weights as a pickled pytorch_model.bin
    import os
    os.makedirs(make['bin_dir'], exist_ok=True)
    config.save_pretrained(make['bin_dir'])
    torch.save(model.state_dict(), os.path.join(make['bin_dir'], 'pytorch_model.bin'))

for load in job['load']:
  cls = ViTForImageClassification if load['kind'] == 'cls' else ViTModel
  model, info = cls.from_pretrained(load['dir'], output_loading_info=True)
  report[load['dir']] = {k: sorted(map(str, v)) for k, v in info.items()}
  np.savez(load['out'], **outputs(model.eval(), load['images']))

proc = job['processor']
processor = AutoImageProcessor.from_pretrained(proc['dir'])
from PIL import Image
image = Image.open(proc['image']).convert('RGB')
np.save(proc['out'], processor(images=image, return_tensors='np')['pixel_values'][0])
report['processor'] = type(processor).__name__

# pytorch_model.bin: read through torch.load(weights_only=True), or refused.
import os
import re
from vit_jax import hf_interop
# torch.save of a live model holds transformers 5's module names (q_proj, ...).
safe = hf_interop.load_released(job['bin']['safetensors_dir'])
from_bin = hf_interop.load_released(job['bin']['dir'])
report['bin_names'] = [k for k in torch.load(
    os.path.join(job['bin']['dir'], 'pytorch_model.bin'), weights_only=True)
    if k.startswith('vit.layers.0.')]
report['bin_equal'] = (sorted(safe) == sorted(from_bin) and
                       all(np.array_equal(safe[k], from_bin[k]) for k in safe))
import datetime, os
torch.save({'embeddings.cls_token': datetime.datetime(2026, 1, 1)},
           os.path.join(job['bin']['unsafe_dir'], 'pytorch_model.bin'))
try:
  hf_interop.read_state_dict(job['bin']['unsafe_dir'])
  report['bin_unsafe'] = 'read'
except ValueError as e:
  report['bin_unsafe'] = str(e)
report['transformers'] = transformers.__version__
json.dump(report, open(job['report'], 'w'))
'''


def _trained_like(shapes, seed):
  """Random parameters at the scales of a trained ViT (as the torch side)."""
  rng = np.random.default_rng(seed)

  def leaf(path, struct):
    names = [p.key for p in path]
    shape = struct.shape
    if names[-1] == 'scale':
      value = 1. + 0.1 * rng.standard_normal(shape)
    elif names[-1] == 'bias':
      value = 0.1 * rng.standard_normal(shape)
    elif names[-1] in ('cls', 'pos_embedding'):
      value = 0.5 * rng.standard_normal(shape)
    else:
      qkv = names[-2] in ('query', 'key', 'value')
      fan_in = shape[0] if qkv else math.prod(shape[:-1])
      value = rng.standard_normal(shape) / math.sqrt(fan_in)
    return value.astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


def _images(size, seed):
  return np.random.default_rng(seed).uniform(
      -1., 1., (2, size, size, 3)).astype(np.float32)


def _our_model(size, representation_size=None, gelu_approximate=True,
               num_classes=NUM_CLASSES):
  return get_model('ViT-B/16', num_classes, representation_size=representation_size,
                   gelu_approximate=gelu_approximate, **OURS_NARROW)


def _apply(model, params, images, **kwargs):
  return np.asarray(jax.jit(lambda p, x: model.apply({'params': p}, x, **kwargs))(
      params, images))


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Builds and exports everything, then runs torch once over all of it."""
  root = tmp_path_factory.mktemp('hf')
  job = {'make': [], 'load': [], 'report': str(root / 'report.json')}
  out = {'root': root, 'imports': {}, 'exports': {}}
  for i, (name, (kind, overrides, weights)) in enumerate(IMPORTS.items()):
    size = overrides['image_size']
    images = root / f'{name}_x.npy'
    np.save(images, _images(size, i))
    config = dict(NARROW, num_labels=NUM_CLASSES, **overrides)
    make = {'dir': str(root / name), 'kind': kind, 'config': config,
            'weights': weights, 'images': str(images),
            'out': str(root / f'{name}_torch.npz')}
    if weights == 'transformers':
      make['eps_probe'] = str(root / f'{name}_torch_eps6.npz')
    if name == 'cls_224':
      make['bin_dir'] = str(root / 'bin')
    job['make'].append(make)
    out['imports'][name] = make
  for i, (name, (size, rep, gelu)) in enumerate(EXPORTS.items()):
    model = _our_model(size, rep)
    params = _trained_like(param_shapes(model, size), seed=10 + i)
    images = root / f'{name}_x.npy'
    np.save(images, _images(size, 10 + i))
    npz = root / f'{name}.npz'
    checkpoint.save_npz(npz, params)
    target = root / f'{name}_hf'
    assert export.main(['--format=transformers', f'--checkpoint={npz}',
                        f'--out={target}', f'--gelu={gelu}']) == 0
    load = {'dir': str(target), 'kind': 'base' if rep else 'cls',
            'images': str(images), 'out': str(root / f'{name}_torch.npz')}
    job['load'].append(load)
    out['exports'][name] = dict(load, model=model, params=params,
                                images_array=np.load(images), npz=str(npz))
  from skimage import data as skimage_data  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  photo = root / 'chelsea.png'
  Image.fromarray(skimage_data.chelsea()).save(photo)
  job['processor'] = {'dir': str(root / 'plain_384_hf'), 'image': str(photo),
                      'out': str(root / 'processor.npy')}
  os.makedirs(root / 'unsafe', exist_ok=True)
  (root / 'unsafe' / 'config.json').write_text(
      (root / 'plain_224_hf' / 'config.json').read_text())
  job['bin'] = {'dir': str(root / 'bin'), 'safetensors_dir': str(root / 'cls_224'),
                'unsafe_dir': str(root / 'unsafe')}
  (root / 'job.json').write_text(json.dumps(job))
  env = dict(os.environ, CUDA_VISIBLE_DEVICES='',
             PYTHONPATH=os.pathsep.join(
                 [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] +
                 [p for p in [os.environ.get('PYTHONPATH')] if p]))
  result = subprocess.run([sys.executable, '-c', _TORCH_SCRIPT,
                           str(root / 'job.json')], capture_output=True,
                          text=True, env=env, timeout=900)
  if result.returncode:
    pytest.fail(f'the transformers side failed (is transformers installed? '
                f'`make test` installs it):\n{result.stderr[-3000:]}')
  out['report'] = json.loads((root / 'report.json').read_text())
  return out


def _record(record_property, name, value):
  record_property(name, value)
  print(f'\n{name}: {value:.2e}')


# ----------------------------------------------------------------------------
# transformers -> vit_jax


@pytest.mark.parametrize('name', ['cls_224', 'cls_384'])
def test_transformers_classifier_loads_with_equal_logits(runs, name,
                                                         record_property):
  make = runs['imports'][name]
  arch = hf_interop.model_for_checkpoint(make['dir'])
  size = make['config']['image_size']
  assert arch.name == 'ViT-Ti/16'  # the first registered /16; all differ in 4 fields
  assert arch.image_size == (size, size)
  assert arch.overrides == dict(OURS_NARROW, gelu_approximate=(
      make['config']['hidden_act'] != 'gelu'))
  assert arch.num_classes == NUM_CLASSES and arch.representation_size is None
  model = get_model(arch.name, arch.num_classes, **arch.model_kwargs())
  params = checkpoint.load_pretrained(make['dir'], param_shapes(model, size),
                                      keep_head=True)
  ours = _apply(model, params, np.load(make['images']))
  theirs = np.load(make['out'])['logits']
  assert float(np.std(theirs)) > 0.3  # informative logits
  err = float(np.max(np.abs(ours - theirs)))
  _record(record_property, f'import_{name}_max_abs_logit_diff', err)
  assert err <= TOLERANCE


def test_transformers_vitmodel_pooler_is_our_pre_logits(runs, record_property):
  make = runs['imports']['pooler_224']
  arch = hf_interop.model_for_checkpoint(make['dir'])
  assert arch.num_classes is None and arch.representation_size == 64
  model = get_model(arch.name, None, **arch.model_kwargs())
  params = checkpoint.load_pretrained(make['dir'], param_shapes(model, 224))
  ours = _apply(model, params, np.load(make['images']))
  theirs = np.load(make['out'])['pooler']
  err = float(np.max(np.abs(ours - theirs)))
  _record(record_property, 'import_pooler_224_max_abs_prelogits_diff', err)
  assert err <= TOLERANCE
  assert float(np.std(theirs)) > 0.3


def test_layer_norm_epsilon_gap_is_measured(runs, record_property):
  """transformers' own init: tiny activations, where 1e-12 vs 1e-6 shows."""
  make = runs['imports']['hfinit_224']
  arch = hf_interop.model_for_checkpoint(make['dir'])
  assert arch.layer_norm_eps == 1e-12
  model = get_model(arch.name, arch.num_classes, **arch.model_kwargs())
  params = checkpoint.load_pretrained(make['dir'], param_shapes(model, 224),
                                      keep_head=True)
  ours = _apply(model, params, np.load(make['images']))
  at_1e12 = float(np.max(np.abs(ours - np.load(make['out'])['logits'])))
  at_1e6 = float(np.max(np.abs(
      ours - np.load(make['eps_probe'])['logits'])))
  _record(record_property, 'import_hfinit_eps1e-12_max_abs_logit_diff', at_1e12)
  _record(record_property, 'import_hfinit_eps1e-6_max_abs_logit_diff', at_1e6)
  assert at_1e6 <= TOLERANCE  # with the same epsilon: equal
  assert at_1e12 > at_1e6  # the gap is the epsilon's


def test_init_from_replaces_the_head_with_zeros(runs, record_property):
  """The fine-tuning start: another class count gets a zero head, the rest is kept."""
  make = runs['imports']['cls_224']
  model = _our_model(224, gelu_approximate=False, num_classes=3)
  params = checkpoint.load_pretrained(make['dir'], param_shapes(model, 224))
  flat = checkpoint.flatten_params(params)
  source = checkpoint.read_released(make['dir'])
  assert not np.any(flat['head/kernel']) and flat['head/kernel'].shape == (64, 3)
  for key in set(flat) - {'head/kernel', 'head/bias'}:
    np.testing.assert_array_equal(flat[key], source[key], err_msg=key)
  images = np.load(make['images'])
  features = _apply(model, params, images, return_prelogits=True)
  err = float(np.max(np.abs(features - np.load(make['out'])['cls_hidden'])))
  _record(record_property, 'init_from_cls_224_max_abs_feature_diff', err)
  assert err <= TOLERANCE
  np.testing.assert_array_equal(_apply(model, params, images), 0.)
  # A pooler checkpoint into a model without pre-logits: the pooler goes too.
  pooled = checkpoint.flatten_params(checkpoint.load_pretrained(
      runs['imports']['pooler_224']['dir'], param_shapes(model, 224)))
  assert 'pre_logits/kernel' not in pooled and not np.any(pooled['head/kernel'])


def test_pytorch_bin_read_only_through_the_weights_only_unpickler(runs):
  assert any('.q_proj.' in k for k in runs['report']['bin_names'])
  assert runs['report']['bin_equal'] is True
  message = runs['report']['bin_unsafe']
  assert 'cannot be read safely' in message and '\n' not in message


def test_predict_builds_the_model_from_config_json(runs):
  make = runs['imports']['cls_384']
  model, params, size, names = predict.build(None, make['dir'], None)
  assert size == 384 and model.hidden_size == 64 and model.num_classes == 10
  assert names is None  # transformers' LABEL_i defaults are no names
  named = runs['root'] / 'cls_384_named'
  named.mkdir(exist_ok=True)
  for f in ('model.safetensors', 'config.json'):
    (named / f).write_bytes((runs['root'] / 'cls_384' / f).read_bytes())
  config = json.loads((named / 'config.json').read_text())
  config['id2label'] = {str(i): f'kind {i}' for i in range(NUM_CLASSES)}
  (named / 'config.json').write_text(json.dumps(config))
  assert predict.build(None, str(named), None)[3][7] == 'kind 7'
  ours = _apply(model, params, np.load(make['images']))
  assert float(np.max(np.abs(ours - np.load(make['out'])['logits']))) <= TOLERANCE


# ----------------------------------------------------------------------------
# vit_jax -> transformers


@pytest.mark.parametrize('name', ['plain_224', 'plain_384'])
def test_export_loads_into_transformers_with_equal_logits(runs, name,
                                                          record_property):
  run = runs['exports'][name]
  info = runs['report'][run['dir']]
  assert info['missing_keys'] == info['unexpected_keys'] == []
  assert info['mismatched_keys'] == []
  ours = _apply(run['model'], run['params'], run['images_array'])
  theirs = np.load(run['out'])['logits']
  assert float(np.std(theirs)) > 0.3
  err = float(np.max(np.abs(ours - theirs)))
  _record(record_property, f'export_{name}_max_abs_logit_diff', err)
  assert err <= TOLERANCE
  config = json.loads(open(os.path.join(run['dir'], 'config.json')).read())
  assert config['architectures'] == ['ViTForImageClassification']
  assert config['hidden_act'] == 'gelu_pytorch_tanh'
  assert config['id2label']['3'] == 'LABEL_3'


@pytest.mark.parametrize('name', ['prelogits_224', 'prelogits_384'])
def test_export_with_pre_logits_is_a_vitmodel_whose_pooler_matches(
    runs, name, record_property):
  run = runs['exports'][name]
  info = runs['report'][run['dir']]
  assert info['missing_keys'] == info['unexpected_keys'] == []
  ours = _apply(run['model'], run['params'], run['images_array'],
                return_prelogits=True)
  pooler = np.load(run['out'])['pooler']
  err = float(np.max(np.abs(ours - pooler)))
  _record(record_property, f'export_{name}_max_abs_prelogits_diff', err)
  assert err <= TOLERANCE
  # Our head on transformers' pooler output gives our logits.
  head = run['params']['head']
  logits = pooler @ np.asarray(head['kernel']) + np.asarray(head['bias'])
  ours_logits = _apply(run['model'], run['params'], run['images_array'])
  assert float(np.std(ours_logits)) > 0.3
  err = float(np.max(np.abs(logits - ours_logits)))
  _record(record_property, f'export_{name}_max_abs_logit_diff_via_pooler', err)
  assert err <= TOLERANCE


def test_gelu_flavour_gap_is_measured(runs, record_property):
  """Our tanh-GELU weights written as transformers' exact 'gelu': the gap."""
  run = runs['exports']['plain_224_exact_gelu_written']
  ours = _apply(run['model'], run['params'], run['images_array'])
  err = float(np.max(np.abs(ours - np.load(run['out'])['logits'])))
  _record(record_property, 'export_tanh_model_as_exact_gelu_max_abs_logit_diff',
          err)
  assert err > TOLERANCE  # why the export writes gelu_pytorch_tanh


def test_round_trips_are_bit_identical(runs):
  # ours -> transformers -> ours
  for name in ('plain_224', 'prelogits_384'):
    run = runs['exports'][name]
    source = checkpoint.read_released(run['npz'])
    back = checkpoint.read_released(run['dir'])
    dropped = {'head/kernel', 'head/bias'} if 'prelogits' in name else set()
    assert set(back) == set(source) - dropped
    for key, value in back.items():
      assert value.dtype == np.float32
      np.testing.assert_array_equal(value, source[key], err_msg=key)
  # transformers -> ours -> transformers
  make = runs['imports']['cls_384']
  theirs = hf_interop.read_state_dict(make['dir'])
  again = hf_interop.from_released(checkpoint.read_released(make['dir']))
  assert set(again) == set(theirs)
  for key, value in again.items():
    np.testing.assert_array_equal(value, theirs[key], err_msg=key)


def test_preprocessor_config_matches_our_preprocessing(runs, record_property):
  root = runs['root']
  theirs = np.load(root / 'processor.npy').transpose(1, 2, 0)
  ours = predict.load_image(str(root / 'chelsea.png'), 384)
  assert theirs.shape == ours.shape == (384, 384, 3)
  err = float(np.max(np.abs(theirs - ours)))
  mean_err = float(np.mean(np.abs(theirs - ours)))
  _record(record_property, 'processor_max_abs_pixel_diff', err)
  _record(record_property, 'processor_mean_abs_pixel_diff', mean_err)
  assert err <= 2 / 255 + 1e-6  # at most one grey level off (resize rounding)
  assert mean_err < 1e-4


# ----------------------------------------------------------------------------
# config.json -> registry, errors, the CLI.


def test_architecture_names_registered_models():
  b16 = hf_interop.architecture({'model_type': 'vit', 'architectures': [
      'ViTForImageClassification'], 'id2label': {str(i): str(i) for i in range(1000)}})
  assert (b16.name, b16.overrides, b16.num_classes) == (
      'ViT-B/16', {'gelu_approximate': False}, 1000)
  l16 = hf_interop.architecture(dict(
      model_type='vit', hidden_size=1024, num_hidden_layers=24,
      intermediate_size=4096, num_attention_heads=16, image_size=384,
      hidden_act='gelu_pytorch_tanh'))
  assert (l16.name, l16.overrides, l16.image_size) == (
      'ViT-L/16', {'gelu_approximate': True}, (384, 384))
  assert l16.representation_size == 1024 and l16.num_classes is None
  h14 = hf_interop.architecture(dict(model_type='vit', hidden_size=1280,
                                     num_hidden_layers=32, intermediate_size=5120,
                                     num_attention_heads=16, patch_size=14))
  assert h14.name == 'ViT-H/14'


@pytest.mark.parametrize('config, message', [
    ({'model_type': 'vit', 'hidden_act': 'relu'}, "hidden_act='relu'"),
    ({'model_type': 'vit', 'num_channels': 1}, 'num_channels=1'),
    ({'model_type': 'vit', 'pooler_act': 'relu'}, "pooler_act='relu'"),
])
def test_architecture_refuses_what_has_no_equivalent(config, message):
  with pytest.raises(ValueError, match=message):
    hf_interop.architecture(config)


def test_bad_directories_are_one_line_errors(tmp_path, capsys):
  deit = tmp_path / 'deit'
  deit.mkdir()
  (deit / 'config.json').write_text('{"model_type": "deit"}')
  with pytest.raises(ValueError, match="model_type 'deit'"):
    checkpoint.load_npz(deit)
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'config.json').write_text('{"model_type": "vit"}')
  with pytest.raises(FileNotFoundError, match='no weights'):
    checkpoint.load_npz(empty)
  assert export.main(['--checkpoint', str(tmp_path / 'none.npz'),
                      '--out', str(tmp_path / 'o')]) == 2
  err = capsys.readouterr().err
  assert 'checkpoint file not found' in err and err.count('\n') == 1


def test_export_cli_npz_and_labels(runs, tmp_path):
  make = runs['imports']['cls_224']
  npz = tmp_path / 'from_hf.npz'
  assert export.main(['--format=npz', '--checkpoint', make['dir'],
                      '--out', str(npz)]) == 0
  source = checkpoint.read_released(make['dir'])
  written = checkpoint.read_released(npz)
  assert set(written) == set(source)
  for key in source:
    np.testing.assert_array_equal(written[key], source[key])
  # A 1,000-class head gets ImageNet's names; a transformers source keeps its own.
  model = _our_model(224, num_classes=1000)
  params = _trained_like(param_shapes(model, 224), seed=5)
  checkpoint.save_npz(tmp_path / 'in1k.npz', params)
  assert export.main(['--checkpoint', str(tmp_path / 'in1k.npz'),
                      '--out', str(tmp_path / 'in1k')]) == 0
  config = json.loads((tmp_path / 'in1k' / 'config.json').read_text())
  names = predict.load_labels('imagenet', 1000)
  assert config['id2label']['0'] == names[0] and len(config['label2id']) == len(
      set(names))
  assert config['hidden_act'] == 'gelu_pytorch_tanh'
  assert export.main(['--checkpoint', make['dir'], '--out',
                      str(tmp_path / 'again')]) == 0
  again = json.loads((tmp_path / 'again' / 'config.json').read_text())
  assert again['hidden_act'] == 'gelu' and again['id2label']['9'] == 'LABEL_9'
  prep = json.loads((tmp_path / 'in1k' / 'preprocessor_config.json').read_text())
  assert prep['size'] == {'height': 224, 'width': 224} and prep['resample'] == 2
  assert prep['image_mean'] == prep['image_std'] == [0.5, 0.5, 0.5]


def test_export_files_take_the_umasks_permissions(tmp_path):
  """model.safetensors too (safetensors writes it 0600 through a temporary file)."""
  model = _our_model(32)
  checkpoint.save_npz(tmp_path / 'tiny.npz',
                      _trained_like(param_shapes(model, 32), seed=3))
  for umask, mode in ((0o022, 0o644), (0o027, 0o640)):
    out = tmp_path / f'hf_{umask:03o}'
    previous = os.umask(umask)
    try:
      assert export.main(['--checkpoint', str(tmp_path / 'tiny.npz'),
                          '--out', str(out)]) == 0
    finally:
      os.umask(previous)
    assert {f: stat.S_IMODE(os.stat(out / f).st_mode)
            for f in os.listdir(out)} == {
                'config.json': mode, 'model.safetensors': mode,
                'preprocessor_config.json': mode}


def test_fused_qkv_new_module_names_and_no_qkv_bias_read_alike():
  """transformers 5 names, a fused qkv and qkv_bias=False map to the same tree."""
  model = _our_model(32)
  flat = checkpoint.flatten_params(_trained_like(param_shapes(model, 32), 7))
  state = hf_interop.from_released(flat)
  config = {'model_type': 'vit', 'num_attention_heads': 4}
  variant = {}
  for key, value in state.items():
    new = key.replace('vit.encoder.layer.', 'vit.layers.').replace(
        '.intermediate.dense.', '.mlp.fc1.').replace('.output.dense.', '.mlp.fc2.')
    new = new.replace('.attention.mlp.fc2.', '.attention.o_proj.')
    variant[new] = value
  for i in range(2):
    attention = f'vit.layers.{i}.attention.attention.'
    for part in ('weight', 'bias'):
      variant[f'vit.layers.{i}.attention.qkv.{part}'] = np.concatenate(
          [variant.pop(f'{attention}{n}.{part}') for n in ('query', 'key', 'value')])
  assert any('.mlp.fc1.' in k for k in variant)
  back = hf_interop.to_released(variant, config)
  assert set(back) == set(flat)
  for key in flat:
    np.testing.assert_array_equal(back[key], flat[key], err_msg=key)
  # qkv_bias=False: no q/k/v biases on disk read as zeros.
  no_bias = {k: v for k, v in state.items()
             if not re.search(r'attention\.attention\.\w+\.bias$', k)}
  zeros = hf_interop.to_released(no_bias, config)
  bias = 'Transformer/encoderblock_1/MultiHeadDotProductAttention_1/key/bias'
  assert zeros[bias].shape == (4, 16) and not np.any(zeros[bias])
  with pytest.raises(ValueError, match='does not know'):
    hf_interop.to_released(dict(state, **{'vit.extra.weight': np.zeros(1)}),
                           config)


def test_pretrained_describes_and_loads_a_transformers_directory(tmp_path):
  """The shared loader (predict, evaluate, init_from) reads config.json's model."""
  model = _our_model(32, num_classes=5)
  params = _trained_like(param_shapes(model, 32), 3)
  target = tmp_path / 'vit'
  hf_interop.save_transformers(target, checkpoint.flatten_params(params),
                               gelu_approximate=True, labels=list('abcde'))
  assert not pretrained.is_run(str(target))
  module, loaded, info = pretrained.load(str(target))
  assert (info.image_size, info.num_classes, info.class_names) == (
      32, 5, list('abcde'))
  assert module.hidden_size == 64 and module.gelu_approximate
  images = _images(32, 0)
  np.testing.assert_array_equal(_apply(module, loaded, images),
                                _apply(model, params, images))
