"""The default sharding rules of a ViT's parameter names (tensor parallelism and FSDP), importable without jax.

Every config carries them (`config_lib.base_config()`'s `sharding.rules`), so
a config file loads, and a bad `--config.key` fails, before jax is imported;
`vit_jax.parallel` turns rules into shardings over a mesh.
"""

from __future__ import annotations


def default_sharding_rules() -> tuple:
  """Tensor parallelism over `model` for attention heads and the MLP, FSDP
  for the rest of every large array. With model=1 and fsdp=1 (the default
  mesh) every rule reduces to replication: plain data parallelism."""
  block = r'Transformer/encoderblock(_\d+)?(/block)?'
  attn = block + '/MultiHeadDotProductAttention_1'
  mlp = block + '/MlpBlock_3'
  # Scanned blocks carry a leading layer axis, which the rules leave alone.
  return (
      (attn + r'/(query|key|value)/kernel', (None, 'model', None, '+fsdp')),
      (attn + r'/(query|key|value)/bias', ('model', None)),
      (attn + r'/out/kernel', ('model', None, None, '+fsdp')),
      (mlp + r'/Dense_0/kernel', (None, 'model', '+fsdp')),
      (mlp + r'/Dense_0/bias', ('model',)),
      (mlp + r'/Dense_1/kernel', ('model', None, '+fsdp')),
      ('.*', 'fsdp'),
  )
