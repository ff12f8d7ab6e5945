"""Tests of `python -m vit_jax.predict`: output, preprocessing, labels and errors."""

import csv
import importlib.util
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest
import skimage.data

from vit_jax import checkpoint, predict
from vit_jax.models import get_model, param_shapes

LINE = re.compile(r'^  (\d\.\d{4})  (.+)$')


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """A random 1,000-class ViT-Ti/16 checkpoint at 224 px and two photographs."""
  root = tmp_path_factory.mktemp('predict')
  rng = np.random.default_rng(0)
  shapes = param_shapes(get_model('ViT-Ti/16', 1000), 224)
  params = jax.tree.map(
      lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
  params['head']['kernel'] *= 100.  # logits spread enough to rank classes
  checkpoint.save_npz(root / 'ti16.npz', params)
  Image.fromarray(skimage.data.chelsea()).save(root / 'chelsea.jpg', quality=90)
  Image.fromarray(skimage.data.coffee()).save(root / 'coffee.png')
  (root / 'notes.jpg').write_text('this is text, not a JPEG\n')
  return root


def _run(capsys, *argv):
  code = predict.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return code, out, err


def _parse(out):
  """{image: [(probability, label), ...]} from predict's output."""
  result, current = {}, None
  for line in out.splitlines():
    m = LINE.match(line)
    if m:
      result[current].append((float(m.group(1)), m.group(2)))
    else:
      current = line
      result[current] = []
  return result


def test_prints_the_top5_classes_of_each_image(files, capsys):
  images = [files / 'chelsea.jpg', files / 'coffee.png']
  code, out, err = _run(capsys, '--model', 'ViT-Ti/16', '--checkpoint',
                        files / 'ti16.npz', *images)
  assert code == 0, err
  result = _parse(out)
  assert list(result) == [str(p) for p in images]
  labels = (pathlib.Path(predict.__file__).parent / 'assets' /
            predict.IMAGENET_LABELS).read_text().splitlines()
  # The same numbers from the per-layer model on the same preprocessing.
  model = get_model('ViT-Ti/16', 1000)
  params = checkpoint.load_npz(files / 'ti16.npz')
  x = np.stack([predict.load_image(str(p), 224) for p in images])
  probs = np.asarray(jax.nn.softmax(model.apply({'params': params}, x)))
  for row, (image, top) in zip(probs, result.items()):
    assert len(top) == 5, image
    ps = [p for p, _ in top]
    assert ps == sorted(ps, reverse=True) and sum(ps) <= 1. + 5e-4
    assert ps[0] > 0.01  # a ranking, not a uniform distribution
    expected = np.argsort(-row)[:5]
    assert [name for _, name in top] == [labels[i] for i in expected]
    np.testing.assert_allclose(ps, row[expected], atol=6e-5)
  assert result[str(images[0])] != result[str(images[1])]


def test_top_k_and_a_labels_file(files, capsys, tmp_path):
  names = tmp_path / 'names.txt'
  names.write_text(''.join(f'thing number {i}\n' for i in range(1000)))
  code, out, _ = _run(capsys, '--model', 'ViT-Ti_16', '--checkpoint',
                      files / 'ti16.npz', '--labels', names, '--top_k', '2',
                      files / 'chelsea.jpg')
  assert code == 0
  top = _parse(out)[str(files / 'chelsea.jpg')]
  assert len(top) == 2 and all(n.startswith('thing number ') for _, n in top)
  names.write_text('cat\ndog\n')
  code, out, err = _run(capsys, '--model', 'ViT-Ti/16', '--checkpoint',
                        files / 'ti16.npz', '--labels', names,
                        files / 'chelsea.jpg')
  assert code == 2 and out == ''
  assert err.strip().endswith('has 2 class names but the checkpoint has 1000 '
                              'classes; pass --labels FILE with one name per '
                              'class.')


def test_preprocessing_resizes_and_scales_to_minus_one_one(tmp_path):
  pixels = np.zeros((10, 30, 3), np.uint8)
  pixels[:, 15:] = 255
  Image.fromarray(pixels).save(tmp_path / 'halves.png')
  image = predict.load_image(str(tmp_path / 'halves.png'), 16)
  assert image.shape == (16, 16, 3) and image.dtype == np.float32
  assert image[:, :7].max() == -1. and image[:, 9:].min() == 1.
  gray = Image.fromarray(np.full((5, 5), 51, np.uint8), mode='L')
  gray.save(tmp_path / 'gray.png')
  np.testing.assert_allclose(predict.load_image(str(tmp_path / 'gray.png'), 4),
                             51 / 127.5 - 1., rtol=1e-6)


def test_the_image_size_defaults_to_the_checkpoint_and_can_be_raised(files):
  _, params, size, _ = predict.build('ViT-Ti/16', str(files / 'ti16.npz'), None)
  assert size == 224
  _, params, size, _ = predict.build('ViT-Ti/16', str(files / 'ti16.npz'), 384)
  posemb = params['Transformer']['posembed_input']['pos_embedding']
  assert size == 384 and posemb.shape == (1, 577, 192)


@pytest.mark.parametrize('args,message', [
    (['--model', 'ViT-Ti/16', 'missing.jpg'], r'image file not found: .*missing\.jpg'),
    (['--model', 'ViT-Ti/16', 'notes.jpg'], r'notes\.jpg is not an image PIL can read'),
    (['--model', 'ViT-B/61', 'chelsea.jpg'],
     r"unknown model 'ViT-B/61'\. Did you mean ViT-B/16"),
    (['--model', 'ViT-S/16', 'chelsea.jpg'],
     r'ti16\.npz does not fit the model: \d+ shape mismatches'),
])
def test_bad_input_gives_one_line_and_status_2(files, capsys, args, message):
  model, image = args[:2], files / args[2]
  code, out, err = _run(capsys, *model, '--checkpoint', files / 'ti16.npz', image)
  assert code == 2 and out == ''
  assert len(err.strip().splitlines()) == 1 and err.startswith('error: ')
  assert re.search(message, err), err


def test_a_missing_checkpoint_is_one_line(files, capsys):
  code, _, err = _run(capsys, '--model', 'ViT-Ti/16', '--checkpoint',
                      files / 'none.npz', files / 'chelsea.jpg')
  assert code == 2 and re.fullmatch(
      r'error: checkpoint file not found: .*none\.npz\n', err)


def test_the_command_line_exits_2_without_a_traceback(files):
  result = subprocess.run(
      [sys.executable, '-m', 'vit_jax.predict', '--model', 'ViT-Ti/16',
       '--checkpoint', str(files / 'ti16.npz'), str(files / 'gone.png')],
      capture_output=True, text=True, cwd=pathlib.Path(__file__).parents[1])
  assert result.returncode == 2
  assert result.stdout == '' and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: image file not found: {files / "gone.png"}')


def test_the_bundled_imagenet_labels_are_timms_lemmas_in_class_order():
  labels = predict.load_labels('imagenet', 1000)
  assert len(labels) == 1000 and labels[281] == 'tabby, tabby cat'
  # Regenerated from the files timm ships (found without importing torch).
  info = (pathlib.Path(importlib.util.find_spec('timm').submodule_search_locations[0])
          / 'data' / '_info')
  synsets = (info / 'imagenet_synsets.txt').read_text().splitlines()
  lemmas = dict(csv.reader(
      (info / 'imagenet_synset_to_lemma.txt').read_text().splitlines(),
      delimiter='\t'))
  assert labels == [lemmas[s] for s in synsets]
  assert predict.load_labels(None, 10) == [f'class {i}' for i in range(10)]
