"""The config files: the paper's recipes, named arguments, and starting from a checkpoint."""

import os
import sys

import pytest

from vit_jax import config_lib, train
from vit_jax.checkpoint import load_npz

import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import finetune, pretrain, quickstart  # pylint: disable=wrong-import-position


def test_pretrain_recipes_follow_the_paper():
  c = pretrain.get_config('model=B/16,dataset=imagenet21k')
  assert c.model.name == 'ViT-B/16' and c.model.representation_size == 768
  assert (c.schedule.base_lr, c.optim.weight_decay) == (1e-3, 0.03)
  assert c.schedule.decay_type == 'linear' and c.schedule.warmup_steps == 10_000
  assert c.total_steps == round(90 * 14_197_122 / 4096)
  assert c.loss == 'sigmoid_xent' and c.model.head_bias_init == -10.0
  c = pretrain.get_config('model=H/14,dataset=jft')
  assert c.schedule.base_lr == 3e-4 and c.model.dropout_rate == 0.0
  assert c.total_steps == round(14 * 303e6 / 4096)
  c = pretrain.get_config('model=B/16,dataset=imagenet2012')
  assert (c.schedule.base_lr, c.optim.weight_decay, c.schedule.decay_type) == (
      3e-3, 0.3, 'cosine')
  assert pretrain.get_config('model=R50+B/16').model.name == 'R50+ViT-B/16'


def test_finetune_recipes_follow_table_4():
  c = finetune.get_config('model=L/16,dataset=cifar100')
  assert c.model.name == 'ViT-L/16' and c.image_size == 384
  assert c.optim.name == 'sgd' and c.optim.momentum == 0.9
  assert c.optim.weight_decay == 0.0 and c.optim.grad_clip_norm == 1.0
  assert c.total_steps == 10_000 and c.batch_size == 512
  assert c.init_from == 'gs://vit_models/imagenet21k/ViT-L_16.npz'
  assert finetune.get_config('dataset=oxford_iiit_pet').total_steps == 500
  assert finetune.get_config('dataset=imagenet2012').total_steps == 20_000


@pytest.mark.parametrize('module,arg,match', [
    (pretrain, 'dataset=mnist', 'unknown pretraining dataset'),
    (finetune, 'dataset=folder', 'needs folder=ROOT and classes=N'),
    (quickstart, 'steps=many', 'must be a int'),
    (quickstart, 'lr=1', "unknown config argument 'lr'"),
])
def test_bad_arguments_are_clear_errors(module, arg, match):
  with pytest.raises(ValueError, match=match):
    module.get_config(arg)


def test_every_config_key_is_declared_with_a_type():
  c = config_lib.base_config()
  c.lock()
  with pytest.raises(AttributeError):
    c.no_such_key = 1
  with pytest.raises(TypeError):
    c.total_steps = 'many'


def test_init_from_a_run_and_from_its_npz_at_another_resolution(tmp_path):
  first = quickstart.get_config('steps=4')
  first.unlock()
  first.evals = {}
  first.model.update(tiny.MODEL)
  train.train_and_evaluate(first, str(tmp_path / 'a'))
  for source in (str(tmp_path / 'a'), str(tmp_path / 'a' / 'params.npz')):
    c = quickstart.get_config('steps=2')
    c.unlock()
    c.evals = {}
    c.model.update(tiny.MODEL)
    c.image_size = 24  # 4x4 -> 6x6 position-embedding grid.
    c.input.pp = 'resize(24)|value_range(-1, 1)|onehot(10)'
    c.init_from = source
    workdir = tmp_path / f'b{len(source)}'
    result = train.train_and_evaluate(c, str(workdir))
    assert result.status == 'done'
    params = load_npz(str(workdir / 'params.npz'))  # What the run exported.
    pos = params['Transformer']['posembed_input']['pos_embedding']
    assert pos.shape == (1, 37, 32)
