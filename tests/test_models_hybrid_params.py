"""Parameter counts of every registered model, written out from the architecture.

The count here is derived by hand from the paper's description (patch
embedding, class token, position embeddings, pre-norm blocks, final norm,
head; for hybrids the BiT ResNet: weight-standardised convolutions without
bias, GroupNorm scale and bias, bottleneck units with a projection where the
shape changes), independently of vit_jax/models, and compared with the
initialised model's parameter tree (jax.eval_shape: nothing is allocated).
Table 3's hybrids R50+ViT-B/32 and R50+ViT-L/16 have no released checkpoint,
so this is their count; the formula is checked on the released models too.
"""

import pytest

from vit_jax.models import MODELS, count_params, get_model, get_spec, param_shapes

# Table 1 (Ti, S from the AugReg study): width, depth, MLP.
SIZES = {'Ti': (192, 12, 768), 'S': (384, 12, 1536), 'B': (768, 12, 3072),
         'L': (1024, 24, 4096), 'H': (1280, 32, 5120)}
# The paper (sec. 4.1): a hybrid feeds the R50's feature map to ViT with
# patch size 1: (i) the output of stage 4 of a regular ResNet-50 for /32, or
# (ii) stage 4's units moved into stage 3 for /16.
R50_STAGE4, R50_STAGE3 = (3, 4, 6, 3), (3, 4, 9)
NEW_HYBRIDS = {'R50+ViT-B/32': ('B', R50_STAGE4), 'R50+ViT-L/16': ('L', R50_STAGE3)}


def resnet_params(stages, width=64):
  """BiT ResNet stem: (parameters, output channels, pixels per position)."""
  gn = lambda c: 2 * c  # GroupNorm scale and bias
  total = 7 * 7 * 3 * width + gn(width)  # conv_root (no bias), gn_root
  channels = width
  for i, units in enumerate(stages):
    f = width * 2**i
    for u in range(units):
      strided = u == 0 and i > 0
      total += channels * f + gn(f)           # conv1 1x1, gn1
      total += 3 * 3 * f * f + gn(f)          # conv2 3x3, gn2
      total += f * 4 * f + gn(4 * f)          # conv3 1x1, gn3
      if channels != 4 * f or strided:
        total += channels * 4 * f + gn(4 * f)  # conv_proj, gn_proj
      channels = 4 * f
  return total, channels, 4 * 2**max(len(stages) - 1, 0)


def vit_params(size, patch, tokens, channels=3, num_classes=1000):
  d, layers, mlp = SIZES[size]
  embedding = patch * patch * channels * d + d
  block = (2 * 2 * d               # two LayerNorms
           + 4 * (d * d + d)       # q, k, v, out projections
           + d * mlp + mlp + mlp * d + d)  # MLP
  return (embedding + d + (tokens + 1) * d  # cls token, position embeddings
          + layers * block + 2 * d + d * num_classes + num_classes)


def expected(name, image_size=224):
  spec = get_spec(name)
  size = name.split('ViT-')[1].split('/')[0]
  patch = spec.patch_size[0]
  if spec.resnet is None:
    return vit_params(size, patch, (image_size // patch)**2)
  stem, channels, stride = resnet_params(spec.resnet.num_layers)
  grid = image_size // (stride * patch)
  return stem + vit_params(size, patch, grid * grid, channels)


def test_table_3_hybrids_are_registered_as_the_paper_describes():
  for name, (size, stages) in NEW_HYBRIDS.items():
    spec = get_spec(name)
    assert name in MODELS and get_spec(name.replace('/', '_')) is spec
    assert spec.resnet.num_layers == stages and spec.patch_size == (1, 1)
    assert spec.stride == int(name[-2:])  # 32 and 16 pixels per token
    assert spec.hidden_size == SIZES[size][0]


@pytest.mark.parametrize('name', MODELS)
def test_the_written_out_count_is_the_models(name):
  assert count_params(param_shapes(get_model(name, 1000), 224)) == expected(name)


def test_the_formula_gives_the_released_counts():
  # Facts (timm and the released files): the formula is no model code echo.
  assert expected('ViT-B/16') == 86_567_656
  assert expected('ViT-L/32') == 306_535_400
  assert expected('R50+ViT-B/16') == 98_659_112
  assert expected('R50+ViT-L/32') == 328_994_856
  assert expected('R26+ViT-B/32') == 101_383_976
  # The new hybrids, as the paper builds them.
  assert expected('R50+ViT-B/32') == 110_945_832
  assert expected('R50+ViT-L/16') == 316_483_624


def test_budget_flops_count_them():
  """vit_jax.budget's forward MACs take them: R50 stem, 1x1 patches on its map."""
  from vit_jax.budget import flops
  for name, (size, stages) in NEW_HYBRIDS.items():
    parts = flops.forward_macs_breakdown(get_spec(name), 224)
    stem, h, w, channels = flops.resnet_stem_macs(stages, 1, 224, 224)
    assert parts['stem'] == stem and (h, w, channels) == (
        (7, 7, 2048) if stages == R50_STAGE4 else (14, 14, 1024))
    assert parts['tokens'] == h * w + 1
    assert parts['embedding'] == h * w * channels * SIZES[size][0]
