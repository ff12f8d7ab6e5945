"""Launchers: Cloud TPU VMs (tpu.py), SLURM/GPU clusters (slurm/), localhost (local.py).

Every launcher starts the same program, `python -m vit_jax.main`, once per
host (or per GPU); only how the processes find each other differs. See
docs/launch.md.
"""
