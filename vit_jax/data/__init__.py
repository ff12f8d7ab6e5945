"""Input pipelines: every dataset, for training and every evaluator, through one API.

    from vit_jax import data
    train = data.build_train(config.input, global_batch_size=512, seed=0,
                             process_index=jax.process_index(),
                             process_count=jax.process_count())
    for batch in train.iterator(start_batch=step):   # step from the checkpoint
      ...  # batch['image'] float32 [B/P, H, W, 3], batch['labels'] float32 [B/P, K]
    val = data.build_eval(config.input, 'test', global_batch_size=512, ...)
    for batch in val:  # + batch['mask'] float32 [B/P], 0 for padding
      ...

`input_config` (an ml_collections.ConfigDict or a plain dict) has the keys:

  data.name       'digits' | 'arrays' | 'folder' | a TFDS name ('cifar10',
                  'imagenet2012', 'imagenet2012_real', 'oxford_iiit_pet:3.*.*').
  data.split      split of the training pipeline, with optional slicing:
                  'train', 'train[:98%]', 'train[98%:]', 'test[:1000]', and
                  concatenations of such parts, as in TFDS:
                  'train[0:800]+train[45000:45200]', 'train+validation'
                  (one split: the parts in order; every source).
                  `build_eval(cfg, split)` overrides it.
  data.root       ('folder') ROOT of ROOT/<split>/<class>/*.{jpg,jpeg,png};
                  examples carry `file_name` (the file's base name).
  data.strict     ('folder') raise on the first corrupt image file instead of
                  skipping and reporting it (default False).
  data.check      ('folder') 'quick' (default: signature and end marker of
                  every file) or 'decode' (decode every file once with PIL).
  data.arrays     ('arrays') {split: {'image': [N, H, W, 3], 'label': [N]}}.
  data.num_classes ('arrays') number of classes (default: max label + 1).
  data.manual_dir (TFDS) directory of manually downloaded archives.
  data_dir        TFDS data directory (default: TFDS's, i.e. $TFDS_DATA_DIR
                  or ~/tensorflow_datasets).
  pp              preprocessing: ops separated by '|' or a list of op strings,
                  e.g. 'resize(16)|value_range(-1,1)|onehot(10)', or a preset
                  such as 'vit_train(224, 1000)' (presets.py; ops: ops.py,
                  label_ops.py, randaugment.py, mixup.py, vtab_tasks.py).
  shuffle_buffer_size  (TFDS training) examples in the shuffle buffer of
                  each host (default 50,000).
  prefetch        batches tf.data prepares ahead (default 2).
  threads         tf.data worker threads (default 0: one per CPU core).

Without a keep(...) op the batches hold only 'image' and 'labels'.
Training order. `digits`, `arrays` and `folder` (random-access sources) have
one global order, a permutation of the whole split per epoch seeded by (seed,
epoch): global batch s is the examples at positions [s B, (s+1) B) of that
stream (epochs roll over inside a batch), host i reads and preprocesses only
its rows [i B/P, (i+1) B/P), and random ops draw from (seed, position), so
the concatenated host batches are bit-identical for any process count P and
a run (or a checkpoint) moves between process counts with the same data
(mixup excepted: it mixes within host batches, see mixup.py). TFDS sources
are streams read as per-host file shards, shuffled by each host's buffer:
there the batches are a function of (seed, process_index, process_count).
Always, `iterator(k)` yields what a fresh iterator yields after k batches. `digits`
and `arrays` run without importing TensorFlow when every op has a NumPy kernel
(decode, resize, resize_small, central_crop, flip_lr, value_range, onehot,
keep, drop, copy, mixup).
"""

from vit_jax.data.pipeline import (EvalPipeline, TrainPipeline, build_eval, build_train,
                                   check_image_size)
from vit_jax.data.prefetch import prefetch
from vit_jax.data.pp import parse_pp
from vit_jax.data.registry import registered_ops

__all__ = ['build_train', 'build_eval', 'TrainPipeline', 'EvalPipeline', 'prefetch',
           'parse_pp', 'registered_ops', 'check_image_size']
