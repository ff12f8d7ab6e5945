"""Hugging Face transformers ViT checkpoints <-> the released vit_jax layout.

A transformers checkpoint directory holds `config.json` (`model_type: vit`)
and the weights: `model.safetensors` (or shards listed in
`model.safetensors.index.json`), or the older `pytorch_model.bin`, which is
read only through `torch.load(weights_only=True)` (no arbitrary objects are
unpickled; without torch it is refused). Both the key names transformers 4
writes (and 5 still writes on save: `encoder.layer.{i}.attention.attention.
query`, ...) and 5's module names (`layers.{i}.attention.q_proj`, `mlp.fc1`,
...) are read, as are fused `qkv` projections.

The mapping, key by key (transformers' Linear weights are [out, in], ours
[in, out]; our attention kernels keep the heads as an axis):

  embeddings.patch_embeddings.projection  [D,3,p,p] <-> embedding [p,p,3,D]
  embeddings.cls_token                              <-> cls
  embeddings.position_embeddings                    <-> Transformer/posembed_input/pos_embedding
  encoder.layer.{i}.layernorm_before                <-> encoderblock_{i}/LayerNorm_0
  encoder.layer.{i}.attention.attention.{query,key,value} [H*d, D]
                                                    <-> MultiHeadDotProductAttention_1/{query,key,value} [D, H, d]
  encoder.layer.{i}.attention.output.dense [D, H*d] <-> MultiHeadDotProductAttention_1/out [H, d, D]
  encoder.layer.{i}.layernorm_after                 <-> encoderblock_{i}/LayerNorm_2
  encoder.layer.{i}.intermediate.dense / output.dense <-> MlpBlock_3/Dense_0 / Dense_1
  layernorm                                         <-> Transformer/encoder_norm
  pooler.dense (+ tanh)                             <-> pre_logits (+ tanh)
  classifier                                        <-> head

with a `vit.` prefix in `ViTForImageClassification` files. Where the two
models differ:

- GELU: transformers' `gelu` is the exact (erf) GELU, `gelu_pytorch_tanh` and
  `gelu_new` the tanh approximation, which is our default (the released
  weights were trained with it). Import sets `gelu_approximate` from
  `hidden_act`; export writes `gelu_pytorch_tanh` or `gelu` to match.
- Layer-norm epsilon: ours is flax's 1e-6 and not configurable; transformers
  reads `layer_norm_eps` (1e-12 in the Hub's converted ViTs). Import keeps our
  1e-6 (a relative change of about eps / (2 variance) in each normalised
  activation; the tests measure it), export writes 1e-6, which is exact.
- Pooler: `ViTModel`'s pooler is our pre-logits layer (Dense + tanh on the
  class token), but `ViTForImageClassification` has no pooler: its classifier
  reads the class token directly. So a model with a head and no pre-logits
  exports as `ViTForImageClassification` (same logits), and a model with
  pre-logits exports as `ViTModel` whose `pooler_output` is our pre-logits
  representation; no transformers ViT class applies a head after the pooler,
  so that head is left out (as the released ImageNet-21k models on the Hub
  are: the paper's fine-tuning replaces it anyway).
- `qkv_bias=False` imports as zero biases (the same function).
"""

from vit_jax.hf_interop.config import (CONFIG, OUR_LAYER_NORM_EPS, PREPROCESSOR_CONFIG,
                                      Architecture, architecture, as_run_config,
                                      gelu_approximate, is_transformers_dir,
                                      preprocessor_config, read_config,
                                      transformers_config)
from vit_jax.hf_interop.directory import (load_released, model_for_checkpoint,
                                         save_transformers)
from vit_jax.hf_interop.weights import (from_released, read_state_dict,
                                       to_released)

__all__ = ['CONFIG', 'OUR_LAYER_NORM_EPS', 'PREPROCESSOR_CONFIG', 'Architecture',
           'architecture', 'as_run_config', 'from_released', 'gelu_approximate',
           'is_transformers_dir', 'load_released', 'model_for_checkpoint',
           'preprocessor_config', 'read_config', 'read_state_dict',
           'save_transformers', 'to_released', 'transformers_config']
