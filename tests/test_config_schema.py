"""Every config file, with every documented argument, fits the typed schema; the fine-tuning protocols are the paper's."""

import os
import sys

import ml_collections
import pytest

from vit_jax import config_lib, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import evaluate, finetune, pretrain, quickstart  # pylint: disable=wrong-import-position

DATASETS = ('imagenet2012', 'cifar10', 'cifar100', 'oxford_iiit_pet',
            'oxford_flowers102')
TRAINING_ARGS = (
    [(quickstart, ''), (quickstart, 'steps=10,batch=64')] +
    # Every registered row of Table 3, and a hybrid following its ViT.
    [(pretrain, f'model={m},dataset={d}') for m, d in pretrain.TABLE_3
     if m in models.MODELS] +
    [(pretrain, f'model=R50+B/16,dataset={d}') for d in pretrain.RECIPES] +
    [(finetune, f'dataset={d},protocol={p}') for d in DATASETS
     for p in finetune.PROTOCOLS] +
    [(finetune, 'dataset=folder,folder=/data/pets,classes=37,protocol=sweep'),
     (finetune, 'model=L/16,dataset=cifar10,steps=100,lr=0.03,batch=256,'
                'image_size=224,init=/ckpt.npz'),
     # Evaluates every 100 steps, a log step (was 123: refused, see below).
     (finetune, 'dataset=cifar10,steps=1234')])


@pytest.mark.parametrize('module,arg', TRAINING_ARGS,
                         ids=[f'{m.__name__.split(".")[-1]}:{a}' for m, a in TRAINING_ARGS])
def test_training_configs_fit_the_schema(module, arg):
  c = module.get_config(arg)
  config_lib.check_schema(c)
  # The overrides an error message may tell users to pass exist.
  assert 'check' in c.input.data and 'root' in c.input.data
  assert 'warmup_steps' in c.schedule and 'mode' in c.vtab


@pytest.mark.parametrize('evals', ['classify', 'real', 'fewshot', 'vtab',
                                   'classify+real+fewshot+vtab'])
def test_evaluate_configs_fit_the_evaluator_schemas(evals):
  c = evaluate.get_config(f'evals={evals},dataset=cifar10')
  for name, ev in c.evals.items():
    config_lib.check_evaluator(name, ev)
  assert bool(c.vtab.mode) == ('vtab' in evals)
  if 'vtab' in evals:
    assert c.vtab.mode == 'paper'  # The paper's protocol by default.


def test_a_replaced_section_is_an_error():
  c = quickstart.get_config()
  c.input.data = dict(name='digits', split='train')  # loses check, root, ...
  with pytest.raises(ValueError, match=r'config lacks input.data.(check|root|'
                     r'strict): a config file replaced its section; update it '
                     r'instead'):
    config_lib.check_schema(c)


@pytest.mark.parametrize('values,match', [
    (dict(type='classify', evry=100), r"unknown key 'evry' \(did you mean "
     r"'every'\?\) for a classify evaluator; known keys: batch_size, data"),
    (dict(type='classify', every='often'), r"evals.val.every='often' must be "
     r'a int'),
    (dict(type='vtab'), r"unknown evaluator type 'vtab'.*set vtab.mode"),
    (dict(type='clasify'), r"unknown evaluator type 'clasify'"),
])
def test_evaluator_keys_and_types_are_checked(values, match):
  with pytest.raises(ValueError, match=match) as err:
    config_lib.check_evaluator('val', ml_collections.ConfigDict(values))
  assert '\n' not in str(err.value)


def test_an_unknown_key_has_a_did_you_mean():
  c = quickstart.get_config()
  c.unlock()
  c.totl_steps = 5
  with pytest.raises(ValueError, match=r"unknown config key 'totl_steps' "
                     r"\(did you mean 'total_steps'\?\)"):
    config_lib.check_schema(c)


@pytest.mark.parametrize('dataset,percent,test', [
    ('imagenet2012', 1, 'validation'), ('cifar10', 2, 'test'),
    ('cifar100', 2, 'test'), ('oxford_iiit_pet', 10, 'test'),
    ('oxford_flowers102', 10, 'test')])
def test_finetune_protocols_are_the_papers(dataset, percent, test):
  final = finetune.get_config(f'dataset={dataset}')
  assert final.input.data.split == 'train'  # The whole training split...
  assert list(final.evals) == ['test']  # ...and the test data reported.
  assert final.evals.test.data.split == test
  dev = finetune.get_config(f'dataset={dataset},protocol=dev')
  assert dev.input.data.split == f'train[:{100 - percent}%]'
  assert dev.evals.dev.data.split == f'train[{100 - percent}%:]'
  sweep = finetune.get_config(f'dataset={dataset},protocol=sweep')
  assert sweep.input.data.split == 'train'  # The final run after the sweep.
  assert (sweep.sweep.train_split, sweep.sweep.eval_split) == (
      f'train[:{100 - percent}%]', f'train[{100 - percent}%:]')
  grid = ((0.003, 0.01, 0.03, 0.06) if dataset == 'imagenet2012'
          else (0.001, 0.003, 0.01, 0.03))
  assert tuple(sweep.sweep.learning_rates) == grid
  assert not final.sweep.learning_rates and not dev.sweep.learning_rates


def test_finetune_from_a_run_takes_its_model():
  c = finetune.get_config('dataset=cifar10,init=runs/quickstart')
  assert c.model.name == '' and c.init_from == 'runs/quickstart'
  assert finetune.get_config('dataset=cifar10').model.name == 'ViT-B/16'


def test_an_evaluator_off_the_log_steps_is_refused():
  """Evaluators run at log steps: every=30 with log_every=50 used to be
  skipped silently until step 150."""
  c = quickstart.get_config()
  c.evals.val.every = 30
  with pytest.raises(ValueError) as e:
    config_lib.check_schema(c)
  assert str(e.value) == (
      'evals.val.every=30 is not a multiple of log_every=50: evaluators run '
      'at log steps, so it would first run at step 150; set evals.val.every '
      'to a multiple of 50 (e.g. 50) or log_every to a divisor of 30 '
      '(e.g. 10).')
  c.evals.val.every, c.log_every = 250, 40
  with pytest.raises(ValueError, match=r'first run at step 1000; .* \(e.g. '
                     r'240\) or log_every to a divisor of 250 \(e.g. 10\)'):
    config_lib.check_schema(c)
  c.evals.val.every = 0  # Only at the end of training.
  config_lib.check_schema(c)
  c.evals.val.every, c.log_every = 200, 50
  config_lib.check_schema(c)
  assert finetune.get_config('dataset=cifar10,steps=1234').evals.test.every == 100
