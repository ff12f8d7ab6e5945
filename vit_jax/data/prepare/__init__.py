"""Prepares class folders or per-class tar archives as a sharded TFDS dataset.

    python -m vit_jax.data.prepare --source=/data/imagenet21k_tars \
        --name=imagenet21k --data_dir=gs://my-bucket/tensorflow_datasets

Modules: `listing` (the source's classes and files), `images` (validation
and optional re-encoding), `plan` (splits and shards), `shards` (TFDS
shards, metadata and report), `job` (options and the resumable plan
record), `local` (a process per core), `beam` (TFDS's Beam support), and
`__main__` (the command line). The result is read by name from `data_dir`
like any catalogue dataset: `input.data.name=imagenet21k`.
"""
