"""configs/pretrain.py walks every row of the paper's Table 3 (App. B.1)."""

import os
import re
import sys

import pytest

from vit_jax.models import MODELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import pretrain  # pylint: disable=wrong-import-position

# Table 3 as printed: models, dataset, epochs, base LR, LR decay, weight
# decay, dropout. ResNet-only rows are not ViT recipes and are left out.
TABLE_3 = [
    ('ViT-B/{16,32}', 'jft', (7,), 8e-4, 'linear', 0.1, 0.0),
    ('ViT-L/32', 'jft', (7,), 6e-4, 'linear', 0.1, 0.0),
    ('ViT-L/16', 'jft', (7, 14), 4e-4, 'linear', 0.1, 0.0),
    ('ViT-H/14', 'jft', (14,), 3e-4, 'linear', 0.1, 0.0),
    ('R50+ViT-B/{16,32}', 'jft', (7,), 8e-4, 'linear', 0.1, 0.0),
    ('R50+ViT-L/32', 'jft', (7,), 2e-4, 'linear', 0.1, 0.0),
    ('R50+ViT-L/16', 'jft', (7, 14), 4e-4, 'linear', 0.1, 0.0),
    ('ViT-B/{16,32}', 'imagenet21k', (90,), 1e-3, 'linear', 0.03, 0.1),
    ('ViT-L/{16,32}', 'imagenet21k', (30, 90), 1e-3, 'linear', 0.03, 0.1),
    ('ViT-{B/16,B/32,L/16,L/32,H/14}', 'imagenet2012', (300,), 3e-3, 'cosine',
     0.3, 0.1),
]
EXAMPLES = {'jft': 303e6, 'imagenet21k': 14_197_122, 'imagenet2012': 1_281_167}


def _expand(models):
  """'R50+ViT-B/{16,32}' -> ['R50+ViT-B/16', 'R50+ViT-B/32']."""
  if '{' not in models:
    return [models]
  head, rest = models.split('{')
  return [head + part for part in rest.rstrip('}').split(',')]


ROWS = [(m, *row[1:]) for row in TABLE_3 for m in _expand(row[0])]


@pytest.mark.parametrize('model,dataset,epochs,lr,decay,wd,dropout', ROWS)
def test_every_row_of_table_3(model, dataset, epochs, lr, decay, wd, dropout):
  short = model.replace('ViT-', '')
  if model not in MODELS:
    # Neither timm nor the released files give its architecture to check.
    with pytest.raises(ValueError, match=re.escape(f"unknown model '{model}'")):
      pretrain.get_config(f'model={short},dataset={dataset}')
    return
  for i, e in enumerate(epochs):
    arg = f'model={short},dataset={dataset}' + (f',epochs={e}' if i else '')
    c = pretrain.get_config(arg)
    assert c.model.name == model
    assert c.schedule.base_lr == lr and c.schedule.decay_type == decay
    assert c.optim.weight_decay == wd and c.model.dropout_rate == dropout
    assert c.total_steps == round(e * EXAMPLES[dataset] / 4096)
    # Gradient clipping at global norm 1 for ImageNet only.
    assert c.optim.grad_clip_norm == (1.0 if dataset == 'imagenet2012' else None)
    # What every row shares.
    assert c.batch_size == 4096 and c.schedule.warmup_steps == 10_000
    assert (c.optim.name, c.optim.b1, c.optim.b2) == ('adam', 0.9, 0.999)
    assert c.image_size == 224 and c.loss == 'sigmoid_xent'
    assert c.model.head_bias_init == -10.0
    assert c.model.representation_size == {'B': 768, 'L': 1024, 'H': 1280}[
        model.split('ViT-')[1][0]]


def test_hybrids_follow_their_vit_counterparts_off_the_jft_rows():
  c = pretrain.get_config('model=R50+B/16,dataset=imagenet21k')
  assert (c.schedule.base_lr, c.optim.weight_decay, c.model.dropout_rate) == (
      1e-3, 0.03, 0.1)
  assert c.total_steps == round(90 * EXAMPLES['imagenet21k'] / 4096)
  c = pretrain.get_config('model=R50+L/32,dataset=imagenet2012')
  assert c.schedule.base_lr == 3e-3 and c.optim.grad_clip_norm == 1.0


def test_a_model_without_a_row_needs_epochs_and_lr():
  with pytest.raises(ValueError, match='Table 3 has no imagenet21k recipe for '
                     'ViT-H/14 .*pass epochs=E,lr=LR'):
    pretrain.get_config('model=H/14,dataset=imagenet21k')
  c = pretrain.get_config('model=H/14,dataset=imagenet21k,epochs=90,lr=0.001')
  assert c.schedule.base_lr == 1e-3
