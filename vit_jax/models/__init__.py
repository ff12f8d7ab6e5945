"""ViT and hybrid models, and the registry that names them."""

from vit_jax.models.fast_path import XLA_GPU_FLAGS, backend_defaults
from vit_jax.models.registry import (ARCHITECTURE_KEYS, MODELS, ModelSpec,
                                     build, with_architecture, count_params,
                                     describe, get_model, get_spec,
                                     model_overrides, param_shapes,
                                     pixels_per_token)
from vit_jax.models.vit import (VisionTransformer, layers_to_scan,
                                scan_to_layers)

__all__ = ['ARCHITECTURE_KEYS', 'MODELS', 'ModelSpec', 'VisionTransformer', 'XLA_GPU_FLAGS',
           'backend_defaults', 'build', 'count_params',
           'describe', 'model_overrides',
           'get_model', 'get_spec', 'layers_to_scan', 'param_shapes',
           'pixels_per_token',
           'scan_to_layers', 'with_architecture']

from vit_jax.models.registry import check_image_size, check_requested_model

__all__ += ['check_image_size', 'check_requested_model']
