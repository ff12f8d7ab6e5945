"""The FLOPs formula against hand counts, module shapes and XLA's cost analysis."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import budget
from vit_jax.models import MODELS, get_model, get_spec
from vit_jax.models.vit import ResNetStem


def test_vit_b16_by_hand():
  # Per layer: 4*197*768^2 + 2*197*768*3072 + 2*197^2*768 = 1,453,954,560;
  # 12 layers + the patch embedding 196*16*16*3*768 + the head 768*1000.
  assert budget.forward_macs('ViT-B/16', 224, num_classes=None) == 17_563_060_224
  assert budget.forward_macs('ViT-B/16', 224) == 17_563_060_224 + 768_000
  assert budget.forward_macs('ViT-B_16', 224, representation_size=768) == (
      17_563_060_224 + 768 * 768 + 768_000)
  assert budget.train_flops_per_image('ViT-B/16', 224, None) == 6 * 17_563_060_224
  # The class token counts; 'gap' drops it (N = 196).
  gap = budget.forward_macs_breakdown('ViT-B/16', 224, None, classifier='gap')
  assert gap['tokens'] == 196
  assert gap['attention_matrices'] == 12 * 2 * 196**2 * 768


def test_r50_stem_by_hand():
  # Root 112^2*7*7*3*64; stage 1 (56^2): 231,211,008 + 2 x 218,365,952;
  # stage 2 (stride in the 3x3): 372,506,624 + 3 x 218,365,952;
  # stage 3 (14^2): 372,506,624 + 8 x 218,365,952.
  macs, h, w, c = budget.resnet_stem_macs((3, 4, 9), 1, 224, 224)
  assert (h, w, c) == (14, 14, 1024)
  assert macs == 118_013_952 + 667_942_912 + 1_027_604_480 + 2_119_434_240
  parts = budget.forward_macs_breakdown('R50+ViT-B/16', 224)
  assert parts['stem'] == macs and parts['tokens'] == 197
  assert parts['embedding'] == 196 * 1024 * 768


def _module_macs(model, image_hw):
  """MACs per image counted from the modules the model really calls.

  Every Conv/Dense/DenseGeneral: output elements x (kernel size / output
  features), i.e. x its fan-in; every attention: q k^T and A v, 2 N^2 D.
  """
  total = 0

  def interceptor(next_fun, args, kwargs, context):
    nonlocal total
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != '__call__':
      return out
    if isinstance(module, (nn.Conv, nn.Dense, nn.DenseGeneral)):
      kernel = module.variables['params']['kernel']
      features = np.prod(np.atleast_1d(module.features))
      total += int(np.prod(out.shape[1:]) * kernel.size // features)
    elif type(module).__name__ == 'MultiHeadDotProductAttention':
      n, d = args[0].shape[1], args[0].shape[2]
      total += 2 * n * n * d
    return out

  x = jnp.zeros((1, *image_hw, 3))
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  return total


@pytest.mark.parametrize('name', MODELS)
def test_every_model_against_its_modules(name):
  # Two layers keep tracing cheap; every layer has the same shape.
  model = get_model(name, 1000, num_layers=2)
  spec = dataclasses.replace(get_spec(name), num_layers=2)
  assert budget.forward_macs(spec, 224) == _module_macs(model, (224, 224))
  per_layer = budget.forward_macs(name, 224) - budget.forward_macs(spec, 224)
  assert per_layer == (get_spec(name).num_layers - 2) * (
      budget.forward_macs(spec, 224) - budget.forward_macs(
          dataclasses.replace(spec, num_layers=1), 224))


@pytest.mark.parametrize('name,size,rep,classifier', [
    ('ViT-B/16', 384, None, 'token'), ('R50+ViT-B/16', 384, 768, 'token'),
    ('R+ViT-Ti/16', 384, None, 'token'), ('ViT-S/16', 224, 384, 'gap'),
    ('R26+ViT-S/32', (224, 160), None, 'token')])
def test_other_sizes_against_modules(name, size, rep, classifier):
  model = get_model(name, 21843, representation_size=rep, classifier=classifier)
  hw = (size, size) if isinstance(size, int) else size
  assert budget.forward_macs(name, size, 21843, rep, classifier) == (
      _module_macs(model, hw))


def _xla_flops_per_image(model, image_size, compiled=True):
  """XLA's flop count of one image's forward: (cost(B=3) - cost(B=1)) / 2.

  The difference removes per-call work that does not scale with the batch
  (the hybrids' weight standardisation). `compiled=False` analyses the HLO
  before optimisation, 30x faster on CPU than compiling; the first test
  below shows both agree on these models.
  """
  def cost(batch):
    x = jnp.zeros((batch, image_size, image_size, 3))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))['params']
    lowered = jax.jit(lambda p, x: model.apply({'params': p}, x)).lower(params, x)
    analysis = (lowered.compile() if compiled else lowered).cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per module
      analysis = analysis[0]
    return analysis['flops']
  return (cost(3) - cost(1)) / 2


def _elementwise_bound(layers, tokens, d, mlp, heads):
  """Generous bound on XLA's non-matmul flops (exp/tanh are not 'flops').

  Per layer: two LayerNorms and residuals ~28 N D, bias + tanh-GELU ~9 N M,
  softmax ~4 H N^2; the final norm, position embedding and biases ~12 N D;
  then x1.5 headroom.
  """
  return 1.5 * (layers * (28 * tokens * d + 9 * tokens * mlp +
                          4 * heads * tokens**2) + 12 * tokens * d)


# Two shapes: a wide one where the patch embedding, projections and MLP each
# exceed the bound on the rest, and a long-sequence one where the attention
# matrices do; together they would catch any term left out or mis-scaled.
@pytest.mark.parametrize('kw,image,checked', [
    (dict(hidden_size=512, num_layers=1, mlp_dim=1024, num_heads=4,
          patch_size=(8, 8)), 32, ('embedding', 'attention_projections', 'mlp')),
    (dict(hidden_size=64, num_layers=2, mlp_dim=128, num_heads=2,
          patch_size=(4, 4)), 64,
     ('attention_matrices', 'attention_projections', 'mlp')),
])
def test_vit_against_xla_cost_analysis(kw, image, checked):
  spec = dataclasses.replace(get_spec('ViT-Ti/16'), **kw)
  parts = budget.forward_macs_breakdown(spec, image, 10)
  macs = budget.forward_macs(spec, image, 10)
  bound = _elementwise_bound(kw['num_layers'], parts['tokens'],
                             kw['hidden_size'], kw['mlp_dim'], kw['num_heads'])
  assert all(2 * parts[k] > bound for k in checked)  # each term is visible
  model = get_model('ViT-Ti/16', 10, **kw)
  xla = _xla_flops_per_image(model, image)
  assert 0 <= xla - 2 * macs <= bound, (xla - 2 * macs, bound)
  # The analysis before optimisation (used below for speed) agrees to 0.1%.
  assert _xla_flops_per_image(model, image, compiled=False) == pytest.approx(
      xla, rel=1e-3)


def test_head_and_pre_logits_against_xla():
  kw = dict(hidden_size=64, num_layers=1, mlp_dim=64, num_heads=2,
            patch_size=(8, 8))
  spec = dataclasses.replace(get_spec('ViT-Ti/16'), **kw)
  small = _xla_flops_per_image(get_model('ViT-Ti/16', 10, **kw), 16, False)
  big = _xla_flops_per_image(
      get_model('ViT-Ti/16', 2010, representation_size=256, **kw), 16, False)
  ours = budget.forward_macs(spec, 16, 2010, 256) - budget.forward_macs(spec, 16, 10)
  assert ours == 64 * 256 + 256 * 2010 - 64 * 10
  # XLA adds one flop per bias element and output (256 + 2000), nothing else.
  assert 0 <= (big - small) - 2 * ours <= 2 * (256 + 2000)


def test_hybrid_stem_against_xla_cost_analysis():
  # A BiT stem with one unit in each of three stages (the registry's stems
  # are checked against their modules above), on 32 px images.
  kw = dict(hidden_size=32, num_layers=1, mlp_dim=64, num_heads=2,
            resnet=ResNetStem((1, 1, 1)))
  spec = dataclasses.replace(get_spec('R26+ViT-S/32'), **kw)
  xla = _xla_flops_per_image(get_model('R26+ViT-S/32', 10, **kw), 32, False)
  valid = 2 * budget.forward_macs(spec, 32, 10, count_padding=False)
  padded = 2 * budget.forward_macs(spec, 32, 10)
  # XLA counts only kernel taps on real pixels; on 32 px images the padding
  # holds 6% of the taps, so the two conventions are told apart, and the
  # rest (GroupNorm, ReLU, pooling: a few flops per activation) stays < 3%.
  assert padded > 1.05 * xla
  assert valid <= xla <= 1.03 * valid, (xla / valid)


def test_peak_flops_by_device_kind():
  assert budget.peak_flops('TPU v3') == 61.5e12
  assert budget.peak_flops('TPU v2') == 22.5e12
  assert budget.peak_flops('TPU v4') == 275e12        # one megacore device
  assert budget.peak_flops('TPU v5 lite') == 197e12
  assert budget.peak_flops('TPU v5p') == budget.peak_flops('TPU v5') == 459e12
  assert budget.peak_flops('TPU v6 lite') == 918e12
  assert budget.peak_flops('NVIDIA A100-SXM4-40GB') == 312e12
  assert budget.peak_flops('NVIDIA A100-SXM4-80GB') == 312e12
  assert budget.peak_flops('NVIDIA H100 80GB HBM3') == 989.4e12
  assert budget.peak_flops('NVIDIA H200') == 989.4e12
  assert budget.peak_flops('NVIDIA H100 PCIe') == 756e12
  for unknown in ('cpu', 'TPU v4 lite', 'NVIDIA GeForce RTX 4090', 'Tesla V100'):
    assert budget.peak_flops(unknown) is None
  assert budget.cores_per_device('TPU v4') == 2.0
  assert budget.cores_per_device('TPU v3') == 1.0
  assert budget.cores_per_device('cpu') == 1.0
  v3 = budget.HARDWARE['v3']
  assert (v3.peak_flops_per_core, v3.cores_per_chip) == (61.5e12, 2)


def test_parse_hardware():
  assert budget.parse_hardware('v3-8') == (budget.HARDWARE['v3'], 4)
  assert budget.parse_hardware('v4-32') == (budget.HARDWARE['v4'], 16)
  assert budget.parse_hardware('v5litepod-16') == (budget.HARDWARE['v5e'], 16)
  assert budget.parse_hardware('TPU v3') == (budget.HARDWARE['v3'], None)
  assert budget.parse_hardware('H100') == (budget.HARDWARE['h100'], None)
  with pytest.raises(ValueError, match="unknown hardware 'v9'"):
    budget.parse_hardware('v9')
  with pytest.raises(ValueError, match='not a positive multiple'):
    budget.parse_hardware('v3-3')
  with pytest.raises(ValueError, match='--chips'):
    budget.parse_hardware('h100-8')


def test_bad_inputs():
  with pytest.raises(ValueError, match='unknown model'):
    budget.forward_macs('ViT-Q/16')
  with pytest.raises(ValueError, match='no 16x16 patches'):
    budget.forward_macs('ViT-B/16', 8)
  with pytest.raises(ValueError, match='image_size must be positive'):
    budget.forward_macs('ViT-B/16', 0)
  with pytest.raises(ValueError, match="unknown classifier 'cls'"):
    budget.forward_macs('ViT-B/16', classifier='cls')


def test_unpooled_has_no_head():
  parts = budget.forward_macs_breakdown('ViT-B/16', 224, 1000, 768,
                                        classifier='unpooled')
  assert parts['tokens'] == 196 and parts['head'] == parts['pre_logits'] == 0
