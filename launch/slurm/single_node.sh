#!/bin/bash
# One machine, all its GPUs, one process (no cluster manager needed).
#
#   WORKDIR=runs/vit-b16 launch/slurm/single_node.sh [--config.key=value ...]
#
# One process drives every visible GPU through the mesh; nothing to coordinate. The
# distributed flags are passed explicitly (one process, a local coordinator) so that
# running this inside a SLURM allocation does not switch on SLURM auto-detection,
# which would hand the process a single GPU.
#
# Environment:
#   WORKDIR              (required) run directory
#   CONFIG               default configs/pretrain.py:model=B/16,dataset=imagenet21k
#   PYTHON               default .venv/bin/python
#   CUDA_VISIBLE_DEVICES which GPUs to use (default: all)
#   PORT                 local coordinator port (default 12355)
#   XLA_PYTHON_CLIENT_MEM_FRACTION  share of GPU memory jax pre-allocates (jax default .75)
#   TFDS_DATA_DIR        where the prepared TFDS datasets are
# Exit status: vit_jax.main's (0 done, 75 stopped by the budget cap).

set -euo pipefail
: "${WORKDIR:?set WORKDIR to the run directory}"
case "$WORKDIR" in gs://* | /*) ;; *) WORKDIR="$PWD/$WORKDIR" ;; esac  # relative to the caller
CONFIG="${CONFIG:-configs/pretrain.py:model=B/16,dataset=imagenet21k}"
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-.venv/bin/python}"

exec "$PYTHON" -m vit_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
  --coordinator_address="127.0.0.1:${PORT:-12355}" --num_processes=1 --process_id=0 "$@"
