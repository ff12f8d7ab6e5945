"""vit_jax.data.prepare: class folders / <class>.tar archives -> a TFDS dataset."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from vit_jax.data.prepare import __main__ as cli
from vit_jax.data.prepare import images, listing, plan
from vit_jax.data.tfds_source import TfdsSource

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ['n02', 'n01', 'dog']  # Written unsorted: labels follow sorted names.
CORRUPT = {'n01/truncated.jpg': 'not decodable', 'n01/garbage.jpg': 'not decodable',
           'dog/notes.txt': 'not decodable', 'n02/empty.jpg': 'empty file'}


def _jpeg(rng, h, w, mode='RGB'):
  pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(out, format='JPEG', quality=90)
  return out.getvalue()


def _tree(root, n_per_class=(5, 4, 6), seed=0, extras=True):
  """Writes ROOT/<class>/*; returns {key: bytes} of every file written."""
  rng = np.random.default_rng(seed)
  files = {}
  for cls, n in zip(CLASSES, n_per_class):
    for i in range(n):
      files[f'{cls}/img_{i}.jpg'] = _jpeg(rng, 12 + i, 16 + 2 * i)  # Same names in all.
  if extras:
    files['dog/sub/grey.jpg'] = _jpeg(rng, 10, 14, mode='L')
    png = io.BytesIO()
    ramp = np.add.outer(np.arange(9) * 12, np.arange(11) * 9).astype(np.uint8)  # Smooth.
    Image.fromarray(np.stack([ramp, 255 - ramp, ramp // 2], -1)).save(png, format='PNG')
    files['n02/photo.png'] = png.getvalue()
    files['n01/big.jpg'] = _jpeg(rng, 40, 64)
    good = files['n01/img_0.jpg']
    files['n01/truncated.jpg'] = good[:len(good) // 2]
    files['n01/garbage.jpg'] = b'\xff\xd8 this is not a jpeg' * 10
    files['dog/notes.txt'] = b'labels are folder names\n'
    files['n02/empty.jpg'] = b''
  for key, data in files.items():
    path = os.path.join(root, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
      f.write(data)
  return files


def _tars(tree_root, tar_root):
  """The same tree as one <class>.tar per class (members in reverse order)."""
  os.makedirs(tar_root)
  for cls in os.listdir(tree_root):
    with tarfile.open(os.path.join(tar_root, cls + '.tar'), 'w') as tar:
      members = []
      for dirpath, _, names in os.walk(os.path.join(tree_root, cls)):
        for n in names:
          full = os.path.join(dirpath, n)
          members.append((full, os.path.relpath(full, os.path.join(tree_root, cls))))
      for full, arc in sorted(members, reverse=True):
        tar.add(full, arcname=arc)


def _prepare(source, data_dir, name='mine', *flags):
  rc = cli.main([f'--source={source}', f'--name={name}', f'--data_dir={data_dir}',
                 '--num_workers=1', *flags])
  assert rc == 0


def _read(data_dir, name='mine'):
  """{split: {file_name: (label, image bytes)}}, the builder."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(name, data_dir=data_dir)
  out = {}
  for split in builder.info.splits:
    ds = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()})
    out[split] = {ex['file_name'].decode(): (int(ex['label']), ex['image'])
                  for ex in tfds.as_numpy(ds)}
  return out, builder


def _shard_bytes(data_dir, name='mine'):
  d = os.path.join(data_dir, name, '1.0.0')
  return {f: open(os.path.join(d, f), 'rb').read() for f in sorted(os.listdir(d))
          if '.tfrecord-' in f}


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """The generated tree, prepared with 4 files held out and 3 files a shard."""
  tmp = tmp_path_factory.mktemp('prep')
  files = _tree(str(tmp / 'tree'))
  _prepare(tmp / 'tree', tmp / 'out', 'mine', '--holdout=4', '--examples_per_shard=3')
  return tmp, files


def test_tree_becomes_a_dataset_with_the_trees_classes_counts_and_bytes(prepared):
  tmp, files = prepared
  data, builder = _read(tmp / 'out')
  names = sorted(CLASSES)
  assert builder.info.features['label'].names == names  # ['dog', 'n01', 'n02']
  good = {k: v for k, v in files.items() if k not in CORRUPT}
  assert len(data['validation']) == 4 and len(data['full']) == len(good) - 4
  examples = {**data['full'], **data['validation']}
  assert sorted(examples) == sorted(good)  # Duplicate names: one example each.
  for key, (label, stored) in examples.items():
    assert label == names.index(key.split('/')[0]), key
    if key == 'n02/photo.png':  # PNG: converted to JPEG, same pixels within JPEG error.
      assert stored[:2] == b'\xff\xd8'
      diff = np.abs(np.asarray(Image.open(io.BytesIO(stored)), np.int16) -
                    np.asarray(Image.open(io.BytesIO(files[key])), np.int16))
      assert 0 < diff.mean() < 4
    else:  # JPEG (RGB and grey): the source's bytes, not re-encoded.
      assert stored == files[key], key
  # Decoded by TFDS, the pixels are the originals' (exactly as TensorFlow decodes
  # the source file; within IDCT rounding of PIL's decoding).
  import tensorflow as tf
  import tensorflow_datasets as tfds
  for ex in tfds.as_numpy(builder.as_dataset(split='full')):
    key = ex['file_name'].decode()
    if key.endswith('.png'):
      continue
    np.testing.assert_array_equal(ex['image'], tf.io.decode_image(files[key], channels=3))
    original = np.asarray(Image.open(io.BytesIO(files[key])).convert('RGB'), np.int16)
    assert np.abs(ex['image'].astype(np.int16) - original).mean() < 2, key
  per_class = np.bincount([l for l, _ in examples.values()], minlength=3)
  assert per_class.tolist() == [sum(k.startswith(c + '/') for k in good) for c in names]
  assert builder.info.splits['full'].num_shards == -(-(len(files) - 4) // 3)  # Planned.
  report = json.load(open(tmp / 'out' / 'mine' / '1.0.0' / 'prepare_report.json'))
  assert {s['file']: s['reason'].split(':')[0] for s in report['skipped']} == CORRUPT
  assert report['num_skipped'] == 4 and report['reencoded'] == 1
  assert report['splits'] == {'full': len(good) - 4, 'validation': 4}
  assert not os.path.exists(tmp / 'out' / 'mine' / '1.0.0' / 'prepare')


def test_tfds_source_reads_it_by_name_from_data_dir(prepared):
  tmp, files = prepared
  src = TfdsSource('mine', 'full[:5]+validation', data_dir=str(tmp / 'out'))
  assert src.num_classes == 3 and src.size == 9 and src.image_keys == ['image']


def test_tar_archives_give_the_same_shards_as_the_tree(prepared):
  tmp, _ = prepared
  _tars(tmp / 'tree', tmp / 'tars')
  _prepare(tmp / 'tars', tmp / 'out_tars', 'mine', '--holdout=4', '--examples_per_shard=3')
  assert _shard_bytes(tmp / 'out_tars') == _shard_bytes(tmp / 'out')
  report = json.load(open(tmp / 'out_tars' / 'mine' / '1.0.0' / 'prepare_report.json'))
  assert report['layout'] == 'tars' and report['num_skipped'] == 4


def test_max_side_resizes_only_larger_images(prepared):
  tmp, files = prepared
  _prepare(tmp / 'tree', tmp / 'out_small', 'mine', '--max_side=20', '--holdout=10%',
           '--examples_per_shard=100')
  data, _ = _read(tmp / 'out_small')
  examples = {**data['full'], **data['validation']}
  assert 1 <= len(data['validation']) <= 2  # 10% of 22 files, less any corrupt ones.
  assert len(examples) == len(files) - len(CORRUPT)
  big = Image.open(io.BytesIO(examples['n01/big.jpg'][1]))
  assert big.size == (20, 12)  # 64x40 -> longer side 20.
  assert examples['n01/img_0.jpg'][1] == files['n01/img_0.jpg']  # 16x12: kept.
  assert Image.open(io.BytesIO(examples['n02/img_4.jpg'][1])).size == (20, 13)  # 24x16 -> 20x13.


def test_check_reasons():
  assert images.check(b'').reason == 'empty file'
  assert images.check(b'hello').reason.startswith('not decodable')
  rng = np.random.default_rng(1)
  cmyk = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert('CMYK').save(
      cmyk, format='JPEG')
  checked = images.check(cmyk.getvalue())
  assert checked.reencoded and Image.open(io.BytesIO(checked.jpeg)).mode == 'RGB'


def test_plan_is_deterministic_and_splits_by_count_or_percent():
  entries = tuple(listing.Entry(i % 3, f'c{i % 3}/{i}', f'/x/{i}') for i in range(103))
  src = listing.Listing('/x', 'folders', ('c0', 'c1', 'c2'), entries)
  a = plan.make_shards(src, split='train', holdout='10%', holdout_split='val',
                       examples_per_shard=20, seed=3)
  b = plan.make_shards(src, split='train', holdout='10%', holdout_split='val',
                       examples_per_shard=20, seed=3)
  assert a == b
  assert [(s.split, s.index, s.num_shards) for s in a] == [('val', 0, 1)] + [
      ('train', i, 5) for i in range(5)]  # 10 held out; 93 in ceil(93 / 20) = 5 shards.
  assert [len(s.entries) for s in a] == [10, 19, 18, 19, 18, 19]  # As even as can be.
  keys = [e.key for s in a for e in s.entries]
  assert sorted(keys) == sorted(e.key for e in entries)  # Every file exactly once.
  assert keys != [e.key for e in entries]  # Shuffled across classes.
  assert plan.holdout_count('7', 103) == 7 and plan.holdout_count('2.5%', 200) == 5
  assert plan.examples_per_shard(100 * 1024, 256) == 2621


@pytest.mark.parametrize('flags, message', [
    (['--source=/nonexistent'], 'is not a directory'),
    (['--holdout=ten'], 'neither a count nor a percent'),
    (['--name=cifar10'], 'TFDS catalogue dataset'),
    (['--name=My-Data'], 'not a TFDS dataset name'),
    (['--holdout=100%'], 'must be below 100%'),
])
def test_bad_input_is_one_line_and_exit_2(prepared, capsys, flags, message):
  tmp, _ = prepared
  argv = [f'--source={tmp / "tree"}', '--name=other', f'--data_dir={tmp / "bad"}', *flags]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and '\n' not in err


def _env():
  return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')


def test_killed_preparation_resumes_to_the_same_shards(tmp_path):
  src = tmp_path / 'tree'
  _tree(str(src), n_per_class=(30, 30, 30), extras=False)
  argv = [sys.executable, '-m', 'vit_jax.data.prepare', f'--source={src}', '--name=mine',
          f'--data_dir={tmp_path / "killed"}', '--examples_per_shard=1', '--num_workers=1',
          '--holdout=6']
  progress = tmp_path / 'killed' / 'mine' / '1.0.0' / 'prepare'
  proc = subprocess.Popen(argv, env=_env(), start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  def done_ids():
    names = os.listdir(progress) if progress.exists() else []
    return sorted(f[:-5] for f in names if f.endswith('.json') and f != 'plan.json')
  while proc.poll() is None and len(done_ids()) < 3:
    time.sleep(0.002)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
  version = tmp_path / 'killed' / 'mine' / '1.0.0'
  assert not (version / 'dataset_info.json').exists()
  done = done_ids()
  assert 3 <= len(done) < 90
  kept = {}
  for shard_id in done:  # 'full-00003-of-00084' -> 'mine-full.tfrecord-00003-of-00084'
    split, rest = shard_id.split('-', 1)
    name = f'mine-{split}.tfrecord-{rest}'
    kept[name] = os.stat(version / name).st_mtime_ns
  assert len(kept) == len(done)
  _prepare(src, tmp_path / 'killed', 'mine', '--examples_per_shard=1', '--holdout=6')
  assert {f: os.stat(version / f).st_mtime_ns for f in kept} == kept  # Kept, not redone.
  _prepare(src, tmp_path / 'whole', 'mine', '--examples_per_shard=1', '--holdout=6')
  resumed, whole = _shard_bytes(tmp_path / 'killed'), _shard_bytes(tmp_path / 'whole')
  assert len(whole) == 90 and resumed == whole


def test_quickstart_trains_on_a_prepared_dataset(tmp_path):
  src = tmp_path / 'tree'
  _tree(str(src), n_per_class=(12, 10, 10), extras=False)
  _prepare(src, tmp_path / 'tfds', 'shapes', '--examples_per_shard=8')
  cmd = [sys.executable, '-m', 'vit_jax.main', '--config=configs/quickstart.py:steps=3,batch=8',
         f'--workdir={tmp_path / "run"}', '--config.input.data.name=shapes',
         f'--config.input.data_dir={tmp_path / "tfds"}', '--config.input.data.split=full',
         "--config.input.pp=decode|resize(16)|value_range(-1, 1)|onehot(10)",
         '--config.input.shuffle_buffer_size=32', '--config.log_every=1',
         '--config.model.num_layers=1']  # One block: the data is under test, not the model.
  run = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  rows = [json.loads(l) for l in open(tmp_path / 'run' / 'metrics.jsonl')]
  losses = [r['train_loss'] for r in rows if 'train_loss' in r]
  assert [r['step'] for r in rows if 'train_loss' in r] == [1, 2, 3]
  assert all(np.isfinite(losses)) and 1.0 < losses[0] < 5.0  # ~ln(10) at the start.


def _prepare_python():
  """.venv-prepare's Python (apache-beam), made with `make prepare-env` if missing."""
  python = os.environ.get('VIT_JAX_PREPARE_PYTHON') or os.path.join(
      REPO, '.venv-prepare', 'bin', 'python')
  if not os.path.exists(os.path.join(os.path.dirname(os.path.dirname(python)), '.installed')):
    subprocess.run(['make', 'prepare-env'], cwd=REPO, check=True, timeout=1200)
  return python


def test_beam_direct_runner_gives_the_same_dataset_as_the_local_path(prepared):
  tmp, files = prepared
  cmd = [_prepare_python(), '-m', 'vit_jax.data.prepare', f'--source={tmp / "tree"}',
         '--name=mine', f'--data_dir={tmp / "beam"}', '--holdout=4', '--examples_per_shard=3',
         '--beam', '--beam_pipeline_options=--runner=DirectRunner,--direct_num_workers=1']
  run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  beam_data, beam_builder = _read(tmp / 'beam')
  local_data, local_builder = _read(tmp / 'out')
  assert beam_data == local_data  # Same split membership, labels and image bytes.
  assert (beam_builder.info.features['label'].names ==
          local_builder.info.features['label'].names)
  local = json.load(open(tmp / 'out' / 'mine' / '1.0.0' / 'prepare_report.json'))
  beam = json.load(open(tmp / 'beam' / 'mine' / '1.0.0' / 'prepare_report.json'))
  for k in ('splits', 'skipped', 'num_skipped', 'reencoded', 'num_classes', 'num_files'):
    assert beam[k] == local[k], k


def test_resuming_with_other_options_or_files_is_refused(tmp_path):
  from vit_jax.data.prepare import job, shards
  writer = shards.Writer(data_dir=str(tmp_path), name='mine', version='1.0.0',
                         class_names=['a'])
  record = {'options': {'seed': 0}, 'fingerprint': 'abc', 'shards': ['full-00000-of-00001']}
  assert job.check_or_write_plan(writer, record) is False  # First run: written.
  assert job.check_or_write_plan(writer, record) is True  # Same plan: resumed.
  with pytest.raises(ValueError, match='other options'):
    job.check_or_write_plan(writer, {**record, 'options': {'seed': 1}})
  with pytest.raises(ValueError, match='other source files'):
    job.check_or_write_plan(writer, {**record, 'fingerprint': 'abd'})
