"""The model options each JAX backend runs fastest with, filled in where a config leaves them unset.

On a GPU: bfloat16 compute (parameters stay float32) and cuDNN's fused
(flash) attention, with the token sequence padded to a multiple of 64
(ViT-B/16 at 224: 197 -> 256 tokens) and the padded keys masked, which leaves
the logits unchanged within bfloat16 rounding. Other backends keep the
paper's defaults (float32, XLA attention). A value the user sets is never
replaced: `dtype='float32'` on a GPU stays float32 with XLA attention, since
cuDNN's fused kernel takes only 16-bit inputs.

`XLA_GPU_FLAGS` lists opt-in XLA flags for GPUs (`benchmarks/side_by_side.py
--xla_gpu_flags`); they are not on by default because nothing here has
measured them yet.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

#: Per backend: model fields filled in when unset (None or absent).
BACKEND_DEFAULTS: dict[str, dict[str, Any]] = {
    'gpu': dict(dtype='bfloat16'),
}
#: Fused attention for 16-bit compute, per backend (only when unset).
FUSED_ATTENTION: dict[str, dict[str, Any]] = {
    'gpu': dict(attention_implementation='cudnn', attention_pad_multiple=64),
}
_SIXTEEN_BIT = ('bfloat16', 'float16')

#: Opt-in XLA flags for one GPU (appended to XLA_FLAGS by the side-by-side
#: benchmark's --xla_gpu_flags): cuBLAS instead of Triton for the matmuls,
#: and the latency-hiding scheduler.
XLA_GPU_FLAGS: tuple[str, ...] = (
    '--xla_gpu_enable_triton_gemm=false',
    '--xla_gpu_enable_latency_hiding_scheduler=true',
)


def backend_defaults(overrides: Mapping[str, Any], backend: str) -> dict:
  """`overrides` with the backend's fast-path fields filled where unset.

  `backend` is `jax.default_backend()` ('cpu', 'gpu', 'tpu'). Fields the
  caller set (not None) win; the dtype decides whether the fused attention
  applies (16-bit only).
  """
  out = {k: v for k, v in overrides.items() if v is not None}
  for key, value in BACKEND_DEFAULTS.get(backend, {}).items():
    out.setdefault(key, value)
  dtype = jnp.dtype(out.get('dtype', 'float32')).name
  if dtype in _SIXTEEN_BIT and 'attention_implementation' not in out:
    for key, value in FUSED_ATTENTION.get(backend, {}).items():
      out.setdefault(key, value)
  return out
