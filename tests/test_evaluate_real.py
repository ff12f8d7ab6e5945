"""ImageNet ReaL: label file checks, file-name lookup, and scoring by hand."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.evaluate import classify, real

# The packaged copy: these tests never skip.
REAL_JSON = str(real.packaged_real_json())


def test_scoring_hand_built_cases():
  k = 6
  # Image 0: single ReaL label 2, predicted 2 -> right (original label 2).
  # Image 1: ReaL {1, 4}, predicted 4 -> right; original label 1 -> wrong.
  # Image 2: empty ReaL list, predicted 3 = original -> left out of ReaL only.
  # Image 3: ReaL {0}, predicted 5, original 5 -> ReaL wrong, original right.
  # Image 4: padding (mask 0) with a ReaL label that would be right.
  logits = jnp.eye(k)[jnp.array([2, 4, 3, 5, 0])] * 5.0
  real_sets = jnp.zeros((5, k)).at[0, 2].set(1).at[1, 1].set(1).at[1, 4].set(1)
  real_sets = real_sets.at[3, 0].set(1).at[4, 0].set(1)
  labels = jnp.eye(k)[jnp.array([2, 1, 3, 5, 0])]
  mask = jnp.array([1., 1., 1., 1., 0.])
  counts = {n: int(v) for n, v in
            real.real_counts(logits, real_sets, labels, mask).items()}
  assert counts == {'real_correct': 2, 'real_count': 3, 'top1_correct': 3,
                    'count': 4}
  acc = real.real_accuracies(counts)
  assert acc['real_top1'] == pytest.approx(2 / 3)
  assert acc['top1'] == pytest.approx(3 / 4)


def test_val_index_from_file_names():
  assert real.val_index('ILSVRC2012_val_00000001.JPEG') == 0
  assert real.val_index(b'/data/val/n01440764/ILSVRC2012_val_00050000.JPEG') == 49_999
  for bad in ('ILSVRC2012_val_00000000.JPEG', 'n01440764_10026.JPEG',
              'ILSVRC2012_val_00050001.JPEG'):
    with pytest.raises(ValueError, match='original file names'):
      real.val_index(bad)


def test_multi_hot_from_lists_with_empty_and_padding():
  lists = [[]] * real.NUM_VAL_IMAGES
  lists[0], lists[2] = [7], [3, 999]
  out = real.multi_hot(lists, [b'ILSVRC2012_val_00000003.JPEG',
                               'ILSVRC2012_val_00000002.JPEG', b'',
                               'ILSVRC2012_val_00000001.JPEG'])
  assert out.shape == (4, 1000)
  assert np.flatnonzero(out[0]).tolist() == [3, 999]
  assert not out[1].any() and not out[2].any()
  assert np.flatnonzero(out[3]).tolist() == [7]


def test_load_real_labels_checks_the_file(tmp_path):
  assert len(real.load_real_labels('')) == 50_000  # '' is the packaged copy
  with pytest.raises(FileNotFoundError, match='leave real_json out'):
    real.load_real_labels(str(tmp_path / 'missing.json'))
  short = tmp_path / 'short.json'
  short.write_text(json.dumps([[1]] * 10))
  with pytest.raises(ValueError, match='50000 label lists'):
    real.load_real_labels(str(short))
  bad = tmp_path / 'bad.json'
  bad.write_text(json.dumps([[1]] * 49_999 + [[1000]]))
  with pytest.raises(ValueError, match='entry 49999'):
    real.load_real_labels(str(bad))


def test_the_packaged_real_json():
  lists = real.load_real_labels()
  assert lists == real.load_real_labels(REAL_JSON)
  assert os.path.getsize(REAL_JSON) == 388_478
  assert sum(bool(x) for x in lists) == 46_837
  assert lists[1] == [970, 795]  # ILSVRC2012_val_00000002.JPEG.
  assert sum(len(x) > 1 for x in lists) == 7_443


def test_real_evaluator_end_to_end_by_file_name():
  """In-memory 'validation' images named like the ILSVRC files, on 8 devices."""
  import jax
  from vit_jax import evaluate, parallel
  from vit_jax.models import get_model
  lists = real.load_real_labels(REAL_JSON)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
  model = get_model('ViT-Ti/16', 1000, hidden_size=32, num_layers=1,
                    mlp_dim=64, num_heads=2, patch_size=(4, 4))
  params = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32))
  params = params['params']
  params['head']['kernel'] = jax.random.normal(jax.random.key(1),
                                               params['head']['kernel'].shape)
  x = images.astype(np.float32) / 127.5 - 1
  pred = np.asarray(jax.jit(model.apply)({'params': params}, x)).argmax(-1)
  # Name every other image after a validation file whose ReaL list holds the
  # prediction, the others after files 1..20 (file 1's list is empty), in
  # shuffled order: the lookup must go by name, not by position.
  numbers, used = [], set(range(1, 21))
  for i, p in enumerate(pred):
    if i % 2:
      numbers.append(i // 2 + 1)
    else:
      n = next(n for n in range(21, 50_001) if p in lists[n - 1] and n not in used)
      used.add(n)
      numbers.append(n)
  names = np.array([f'ILSVRC2012_val_{n:08d}.JPEG'.encode() for n in numbers])
  original = rng.integers(0, 1000, size=40)
  original[::3] = pred[::3]  # Some original labels right too.
  has = [bool(lists[n - 1]) for n in numbers]
  hits = [p in lists[n - 1] for p, n in zip(pred, numbers)]
  expected_real = sum(hits) / sum(has)
  assert 20 <= sum(hits) < sum(has) < 40
  config = {'real': dict(
      data=dict(name='arrays', arrays={'validation': {
          'image': images, 'label': original, 'file_name': names}}),
      pp="value_range(-1, 1)|onehot(1000)|keep('image', 'labels', 'file_name')",
      real_json=REAL_JSON, batch_size=16)}
  [ev] = evaluate.build_evaluators(config, model=model, image_size=8,
                                   mesh=parallel.make_mesh({'data': -1}))
  result = ev.run(params)
  assert result['num_examples'] == 40
  assert result['real_num_examples'] == sum(has) < 40  # Some lists are empty.
  assert result['real_top1'] == pytest.approx(expected_real)
  assert result['top1'] == pytest.approx(np.mean(pred == original))

  # The classify evaluator on the same images, with the ReaL sets as its
  # (multi-hot) labels, as the real_eval preset makes them: empty sets are
  # left out there too, so the number is the same.
  config = {'classify': dict(
      data=dict(name='arrays', arrays={'test': {
          'image': images, 'label': original,
          'real': real.multi_hot(lists, names)}}),
      pp="value_range(-1, 1)|copy('real', 'labels')|keep('image', 'labels')",
      batch_size=16)}
  [ev] = evaluate.build_evaluators(config, model=model, image_size=8,
                                   mesh=parallel.make_mesh({'data': -1}))
  classified = ev.run(params)
  assert classified['top1'] == result['real_top1']
  assert classified['num_examples'] == result['real_num_examples']


def test_classify_and_real_counts_agree_on_the_same_logits():
  """ImageNet-sized: 3,163 of the first 50,000 lists are empty."""
  lists = real.load_real_labels()
  rng = np.random.default_rng(0)
  n = 2000
  numbers = rng.choice(50_000, size=n, replace=False)
  names = [f'ILSVRC2012_val_{i + 1:08d}.JPEG' for i in numbers]
  sets = real.multi_hot(lists, names)
  # Logits whose argmax is in the set for about 60% of the labelled images.
  pred = np.where(rng.random(n) < 0.6,
                  [l[0] if l else 0 for l in (lists[i] for i in numbers)],
                  rng.integers(0, 1000, n))
  logits = jnp.asarray(np.eye(1000, dtype=np.float32)[pred])
  mask = jnp.ones(n)
  by_classify = classify.accuracies(
      classify.topk_counts(logits, jnp.asarray(sets), mask))
  by_real = real.real_accuracies(real.real_counts(
      logits, jnp.asarray(sets), jnp.asarray(sets), mask))
  empty = sum(not lists[i] for i in numbers)
  assert 100 < empty < 200  # about 6.3% of the images
  assert by_classify['num_examples'] == by_real['real_num_examples'] == n - empty
  assert by_classify['top1'] == by_real['real_top1']
  hits = sum(p in lists[i] for p, i in zip(pred, numbers))
  assert by_real['real_top1'] == pytest.approx(hits / (n - empty))


def _validation_folder(root):
  """A small ImageNet-like validation folder: two classes, images of several
  shapes (so a crop and a resize differ), named like the ILSVRC files."""
  from PIL import Image
  rng = np.random.default_rng(0)
  shapes = [(24, 40), (40, 24), (30, 30), (20, 52), (36, 28), (28, 36)]
  for i, (h, w) in enumerate(shapes):
    folder = root / 'validation' / ('n01440764', 'n01443537')[i % 2]
    folder.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / f'ILSVRC2012_val_{i + 1:08d}.JPEG',
                                 quality=95)
  return str(root)


def _images(evaluator):
  batches = list(evaluator.batches())
  mask = np.concatenate([b['mask'] for b in batches]) > 0
  return (np.concatenate([b['image'] for b in batches])[mask],
          np.concatenate([b['labels'] for b in batches])[mask])


def test_real_and_top1_score_the_same_view(tmp_path):
  """By default ReaL reads exactly the pixels the classify evaluator reads
  (the whole image resized to the model's resolution, as the paper and BiT);
  the ImageNet crop is the named option view='central_crop'."""
  import jax
  from vit_jax import evaluate, parallel
  from vit_jax.models import get_model
  root = _validation_folder(tmp_path)
  model = get_model('ViT-Ti/16', 1000, hidden_size=32, num_layers=1,
                    mlp_dim=64, num_heads=2, patch_size=(4, 4))
  mesh = parallel.make_mesh({'data': -1})
  data = dict(name='folder', root=root)
  build = lambda config: evaluate.build_evaluators(
      config, model=model, mesh=mesh, image_size=16, num_classes=1000)
  classify_ev, real_ev, crop_ev = build({
      'val': dict(type='classify', data=data, split='validation',
                  batch_size=8),
      'real': dict(data=data, batch_size=8),
      'real_crop': dict(type='real', data=data, view='central_crop',
                        batch_size=8)})
  top1_images, top1_labels = _images(classify_ev)
  real_images, real_labels = _images(real_ev)
  assert top1_images.shape == (6, 16, 16, 3)
  np.testing.assert_array_equal(real_images, top1_images)
  np.testing.assert_array_equal(real_labels, top1_labels)
  # The results say which view was scored.
  assert real_ev.protocol['view'] == 'resize'
  assert '|resize(16)|' in real_ev.protocol['pp']
  assert crop_ev.protocol['view'] == 'central_crop'
  assert 'resize_small(18)|central_crop(16)' in crop_ev.protocol['pp']
  crop_images, _ = _images(crop_ev)
  assert not np.allclose(crop_images, top1_images)  # The option is another view.
  # Same pixels, same checkpoint: the original-label top-1 is the same number.
  params = jax.jit(model.init)(jax.random.key(0),
                               np.zeros((1, 16, 16, 3), np.float32))['params']
  params['head']['kernel'] = jax.random.normal(jax.random.key(1),
                                               params['head']['kernel'].shape)
  params['head']['kernel'] = params['head']['kernel'].at[:, :2].multiply(30.)
  assert real_ev.run(params)['top1'] == classify_ev.run(params)['top1']


def test_real_view_errors_name_the_choices():
  from vit_jax import evaluate, parallel
  from vit_jax.models import get_model
  model = get_model('ViT-Ti/16', 1000, hidden_size=32, num_layers=1,
                    mlp_dim=64, num_heads=2, patch_size=(4, 4))
  mesh = parallel.make_mesh({'data': -1})
  with pytest.raises(ValueError, match=r"evals.real: ReaL view='crop' is not "
                     r'one of resize, central_crop'):
    evaluate.build_evaluators({'real': dict(view='crop')}, model=model,
                              mesh=mesh, image_size=16)
  with pytest.raises(ValueError, match=r"give view='central_crop' or a pp "
                     r'string, not both'):
    evaluate.build_evaluators({'real': dict(view='central_crop', pp='decode')},
                              model=model, mesh=mesh, image_size=16)


def test_the_printed_table_says_which_view_was_scored():
  from vit_jax.evaluate import run
  results = {'metrics': {'real': {'real_top1': 0.5, 'real_num_examples': 4.0},
                         'fewshot': {'mean_5shot': 0.25,
                                     'mean_num_datasets': 6.0}},
             'protocol': {'real': {'view': 'resize', 'pp': 'decode|resize(8)'},
                          'fewshot': {'mean_datasets': ['a', 'b'],
                                      'beside_mean': [], 'skipped': []}}}
  lines = run.table(results).splitlines()
  assert lines[-2:] == ['real: view: resize; pp: decode|resize(8)',
                        'fewshot: mean datasets: a, b']
  assert any(l.split()[-1] == '6' for l in lines if 'mean_num_datasets' in l)
