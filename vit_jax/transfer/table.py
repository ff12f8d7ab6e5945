"""The paper's Table 2 column for one pretrained checkpoint: fine-tuned top-1 per dataset (mean ± std over seeds), VTAB-1k, core-hours.

python -m vit_jax.transfer.table --checkpoint=CKPT --workdir=W \\
    [--rows=cifar10,cifar100,vtab] [--seeds=3] [--lr=cifar10=0.003] \\
    [--max_core_hours=H]

CKPT is a released .npz, a run's workdir or a transformers directory (as for
`vit_jax.evaluate`). Each row is fine-tuned `--seeds` times (seeds 0, 1, ...)
under the final protocol of configs/finetune.py (Table 4's steps, 384 px,
SGD, the whole training split, the test split reported); ImageNet's runs
are scored with the ReaL evaluator, whose original-label top-1 and ReaL
top-1 come from the same predictions. Table 2's own ImageNet numbers were
fine-tuned ViT-L/16 at 512 px and ViT-H/14 at 518 px with Polyak averaging
(0.9999), and so does this command's ImageNet row for those models
(PAPER_IMAGENET; `--config_args=image_size=` and `--override=ema_decay=`
choose otherwise). The VTAB row runs VTAB-1k under the
paper's protocol (vtab.py) once per seed and reports its 19-task mean. Each
row's learning rate is `--lr`'s ('given'), else the rate a finished
`protocol=sweep` chose in W/<row>/ (run `python -m vit_jax.main
--config=configs/finetune.py:dataset=D,protocol=sweep --workdir=W/D` first to
have one), else the recipe's default table (configs/finetune.py DEFAULT_LR,
with its source); results name it (`lr_source`).

Every run has its own workdir, W/<row>/seed<k>/ (VTAB: W/vtab/seed<k>/<task>/),
so a rerun does no finished run again and resumes an interrupted one; SIGTERM
saves the running child and exits 0; one compute account
(W/transfer_account.json) and one cap (`--max_core_hours`) cover the whole
table. Datasets that are not prepared are listed in one line before anything
trains (exit 2). The column is written as W/table2.md and W/table2.json, in
the paper's form (mean ± std, sample std over seeds with ddof=1), with each
row's core-hours, their total, the pretraining core-days read from the
checkpoint's run (metrics.jsonl; 'unknown' for a released file) and, for a
released checkpoint the paper reports (ViT-L_16.npz: its ImageNet-21k
column), the paper's numbers beside ours.

Rows: imagenet2012 (ImageNet and ImageNet ReaL), cifar10, cifar100,
oxford_iiit_pet, oxford_flowers102, vtab; `digits` (the bundled digits, no
download: for checks, not a paper row) only when named. `register_row` adds
rows.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
import sys
from typing import Any, Callable, Optional, Sequence

from absl import app
import jax
import ml_collections
import numpy as np

from vit_jax import (cli, config_lib, files, parallel, preemption, pretrained,
                     train, train_checkpoint)
from vit_jax import workdir as workdir_lib
from vit_jax.data import sources, vtab_tasks
from vit_jax.transfer import paper_table2, runs, sweep, vtab

MARKDOWN = 'table2.md'
JSON = 'table2.json'


@dataclasses.dataclass(frozen=True)
class Line:
  """One line of the column: its key, the paper's label, the child metric."""
  key: str
  label: str
  metric: str


@dataclasses.dataclass(frozen=True)
class Row:
  """What trains for one or more lines: `dataset` of the fine-tuning config
  file ('' for VTAB), once per seed, in W/<name>/seed<k>/."""
  name: str
  dataset: str
  lines: tuple[Line, ...]
  paper: bool = True  # In the default selection (a row of Table 2).

  @property
  def is_vtab(self) -> bool:
    return not self.dataset


ROWS: dict[str, Row] = {}

# Table 2's ImageNet numbers of these models were fine-tuned at a higher
# resolution, with Polyak averaging of factor 0.9999 (the paper, Sec. 4.2);
# the other rows (and other models) at 384 px without it.
PAPER_IMAGENET = {'ViT-L/16': (512, 0.9999), 'ViT-H/14': (518, 0.9999)}


def register_row(row: Row) -> None:
  """Adds (or replaces) a row that `--rows` can name."""
  ROWS[row.name] = row


for _row in (
    Row('imagenet2012', 'imagenet2012',
        (Line('imagenet', 'ImageNet', 'test/top1'),
         Line('imagenet_real', 'ImageNet ReaL', 'test/real_top1'))),
    Row('cifar10', 'cifar10', (Line('cifar10', 'CIFAR-10', 'test/top1'),)),
    Row('cifar100', 'cifar100', (Line('cifar100', 'CIFAR-100', 'test/top1'),)),
    Row('oxford_iiit_pet', 'oxford_iiit_pet',
        (Line('oxford_iiit_pet', 'Oxford-IIIT Pets', 'test/top1'),)),
    Row('oxford_flowers102', 'oxford_flowers102',
        (Line('oxford_flowers102', 'Oxford Flowers-102', 'test/top1'),)),
    Row('vtab', '', (Line('vtab', 'VTAB (19 tasks)', 'vtab/mean'),)),
    Row('digits', 'digits',
        (Line('digits', 'digits (bundled; not a paper row)', 'test/top1'),),
        paper=False)):
  register_row(_row)


def select_rows(spec: str = '') -> list[Row]:
  """'' or 'all': the paper's rows; else names joined by ','."""
  names = [n for n in spec.split(',') if n and n != 'all']
  if not names:
    return [r for r in ROWS.values() if r.paper]
  unknown = [n for n in names if n not in ROWS]
  if unknown:
    raise ValueError(f'unknown table rows {", ".join(unknown)}; choose from '
                     f'{", ".join(ROWS)}.')
  return [ROWS[n] for n in dict.fromkeys(names)]


def parse_rates(spec: str) -> dict[str, float]:
  """'cifar10=0.003,oxford_iiit_pet=0.01' -> {row: rate}."""
  rates = {}
  for item in filter(None, spec.split(',')):
    name, _, value = item.partition('=')
    try:
      rates[name] = float(value)
    except ValueError:
      raise ValueError(f'--lr item {item!r} is not ROW=RATE, e.g. '
                       f'cifar10=0.003.') from None
  return rates


def load_config_file(path: str):
  """The fine-tuning config file as a module (as --config files are read)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'config file {path} does not exist; pass '
                            f'--finetune_config=configs/finetune.py (from the '
                            f'repository root) or its path.')
  spec = importlib.util.spec_from_file_location('table_finetune_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def pretraining_core_hours(checkpoint: str) -> Optional[float]:
  """The core-hours of the run the checkpoint is (its metrics.jsonl's last
  count), or None (a released file, a transformers directory)."""
  run = checkpoint
  if checkpoint.endswith('.npz'):
    run = pretrained.run_of_export(checkpoint)
  if not run or not pretrained.is_run(run):
    return None
  hours = None
  path = os.path.join(run, workdir_lib.METRICS)
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          continue
        if isinstance(row, dict) and 'core_hours' in row:
          hours = float(row['core_hours'])
  return hours


def mean_std(values: Sequence[float]) -> tuple[Optional[float],
                                                Optional[float]]:
  """(mean, sample std with ddof=1) of `values`; std None below two."""
  if not values:
    return None, None
  array = np.asarray(values, np.float64)
  return float(array.mean()), (float(array.std(ddof=1)) if len(array) > 1
                               else None)


class Table:
  """Runs (or resumes, or reads back) a Table 2 column; see the module doc.

  `config_module` is the fine-tuning config file (configs/finetune.py);
  `overrides` ({dotted key: value}) are set on every fine-tuning child config;
  `train_fn` replaces train.train_and_evaluate (tests).
  """

  def __init__(self, checkpoint: str, workdir: str, *, rows: Sequence[Row],
               config_module: Any, seeds: int = 3,
               rates: Optional[dict] = None, config_args: str = '',
               overrides: Optional[dict] = None,
               max_core_hours: Optional[float] = None,
               vtab_config: Optional[dict] = None,
               data_dir: Optional[str] = None,
               train_fn: Optional[Callable] = None):
    if seeds < 1:
      raise ValueError(f'--seeds={seeds}: at least one seed.')
    self.checkpoint = checkpoint
    self.workdir = workdir_lib.absolute(workdir)
    self.rows = list(rows)
    self.module = config_module
    self.seeds = seeds
    self.rates = dict(rates or {})
    unknown = set(self.rates) - {r.name for r in self.rows}
    if unknown:
      raise ValueError(f'--lr names rows that are not in the table: '
                       f'{", ".join(sorted(unknown))}.')
    self.config_args = config_args
    self.overrides = dict(overrides or {})
    self.budget = ml_collections.ConfigDict(dict(
        max_core_hours=max_core_hours, max_core_days=None,
        plan_core_hours=None))
    self.vtab_config = dict(vtab_config or {})
    self.data_dir = data_dir
    self.train_fn = train_fn
    self._described = None

  # -------------------------------------------------------------- configs
  def _model_arg(self) -> str:
    """'' for a run (the loop takes its model), else the checkpoint's name."""
    if pretrained.run_config(self.checkpoint):
      return ''
    return self.described().model['name']

  def described(self) -> pretrained.Described:
    if self._described is None:
      self._described = pretrained.describe(self.checkpoint)
    return self._described

  def child_config(self, row: Row, seed: int, lr: Optional[float] = None):
    """The fine-tuning config of one seed of `row` (final protocol)."""
    args = [f'dataset={row.dataset}', 'protocol=final',
            f'init={self.checkpoint}']
    model = self._model_arg()
    if model:
      args.append(f'model={model}')
    if lr is not None:
      args.append(f'lr={lr!r}')
    paper = (PAPER_IMAGENET.get(self.described().model.get('name', ''))
             if row.dataset == 'imagenet2012' else None)
    if paper and 'image_size=' not in self.config_args:
      args.append(f'image_size={paper[0]}')
    if self.config_args:
      args.append(self.config_args)
    c = self.module.get_config(','.join(args))
    if paper and 'ema_decay' not in self.overrides:
      c.ema_decay = paper[1]
    c.seed = seed
    if self.data_dir:
      c.input.data_dir = self.data_dir
    if any(line.metric.endswith('/real_top1') for line in row.lines):
      # ImageNet: one evaluator, its top-1 and ReaL from the same logits.
      every = c.evals.test.get('every', 0)
      c.evals = ml_collections.ConfigDict()
      c.evals.test = config_lib.evaluator_config('real', every=every)
    for key, value in self.overrides.items():
      section, _, leaf = key.rpartition('.')
      target = c
      for part in filter(None, section.split('.')):
        target = target[part]
      target[leaf] = value
    config_lib.check_schema(c)
    return c

  def row_config(self, row: Row, seed: int) -> tuple[Any, str]:
    """(child config, lr_source): --lr, a sweep in W/<row>, or the table."""
    if row.name in self.rates:
      return self.child_config(row, seed, self.rates[row.name]), 'given'
    config = self.child_config(row, seed)
    config, source = sweep.final_learning_rate(
        config, os.path.join(self.workdir, row.name))
    return config, source

  def vtab_runner(self, seed: int) -> vtab.VtabRunner:
    c = {'mode': 'paper', **self.vtab_config}
    return vtab.VtabRunner(
        vtab.protocol_from_config(c), self.described().model,
        tasks=vtab_tasks.task_names(c.get('tasks') or 'all'),
        data_dir=c.get('data_dir') or self.data_dir, seed=seed,
        keep_checkpoints=bool(c.get('keep_checkpoints')))

  # ----------------------------------------------------------- data check
  def missing(self) -> dict[str, str]:
    """{row: why} for every row whose data is not prepared."""
    missing = {}
    for row in self.rows:
      if row.is_vtab:
        runner = self.vtab_runner(0)
        gone = vtab_tasks.missing_tasks(runner.tasks, runner.data_dir)
        if gone:
          missing[row.name] = '; '.join(f'{t}: {h}' for t, h in gone.items())
        continue
      config = self.child_config(row, 0, lr=1.0)
      try:
        sources.open_source(config.input.data, config.input.data_dir)
      except (FileNotFoundError, ValueError) as e:
        missing[row.name] = str(e).splitlines()[0].rstrip('.')
    return missing

  # ----------------------------------------------------------------- runs
  def run(self) -> dict:
    """Trains what is not finished; writes and returns the table (raises
    FileNotFoundError listing unprepared data before anything trains)."""
    missing = self.missing()
    if missing:
      raise FileNotFoundError(
          f'{len(missing)} of {len(self.rows)} table rows have no prepared '
          f'data: ' + ' | '.join(f'{k}: {v}' for k, v in missing.items())
          + '. Prepare them, or leave them out with --rows.')
    results = {row.name: [] for row in self.rows}
    stopped = None
    with runs.RunComposer(self.workdir, self.budget,
                          train_fn=self.train_fn) as composer:
      try:
        for seed in range(self.seeds):
          for row in self.rows:
            results[row.name].append(self._run_one(composer, row, seed))
            self.write(results, composer, None)
      except runs.Stopped as stop:
        stopped = stop
      return self.write(results, composer, stopped)

  def _run_one(self, composer: runs.RunComposer, row: Row, seed: int) -> dict:
    where = os.path.join(self.workdir, row.name, f'seed{seed}')
    if row.is_vtab:
      runner = self.vtab_runner(seed)
      table = runner.run(self.checkpoint, where, composer, missing={})
      return {'seed': seed, 'workdir': where,
              'metrics': {f'vtab/{k}': v for k, v in table['summary'].items()},
              'learning_rate': runner.protocol.learning_rates[0],
              'lr_source': f'vtab.py:{runner.protocol.mode}'}
    config, source = self.row_config(row, seed)
    result = composer.train(config, where, f'table {row.name} seed {seed}')
    record = {'seed': seed, 'workdir': where, 'metrics': result.metrics,
              'learning_rate': float(config.schedule.base_lr),
              'lr_source': source}
    self._note_rate(where, record)
    return record

  @staticmethod
  def _note_rate(where: str, record: dict) -> None:
    """The child's result.json says where its learning rate came from."""
    path = os.path.join(where, runs.RESULT)
    done = files.read_json(path)
    if (jax.process_index() == 0 and done is not None
        and 'lr_source' not in done):
      files.write_json(path, {**done, 'learning_rate': record['learning_rate'],
                              'lr_source': record['lr_source']})

  # --------------------------------------------------------------- output
  def write(self, results: dict, composer: runs.RunComposer,
            stopped: Optional[runs.Stopped]) -> dict:
    table = self.summarize(results, composer, stopped)
    if jax.process_index() == 0:
      files.write_json(os.path.join(self.workdir, JSON), table)
      files.write_text(os.path.join(self.workdir, MARKDOWN), markdown(table))
    return table

  def summarize(self, results: dict, composer: runs.RunComposer,
                stopped: Optional[runs.Stopped]) -> dict:
    column = paper_table2.column_of(self.checkpoint)
    paper = paper_table2.COLUMNS.get(column, {})
    hours = pretraining_core_hours(self.checkpoint)
    rows = {}
    for row in self.rows:
      done = results[row.name]
      prefix = row.name + os.sep
      spent = sum(h for k, h in composer.account.items()
                  if k.startswith(prefix))
      lines = {}
      for line in row.lines:
        values = [100 * r['metrics'][line.metric] for r in done
                  if line.metric in r['metrics']]
        mean, std = mean_std(values)
        lines[line.key] = {'label': line.label, 'values': values,
                           'mean': mean, 'std': std,
                           'paper': paper.get(line.key)}
      rows[row.name] = {
          'lines': lines, 'seeds_done': len(done), 'seeds': self.seeds,
          'core_hours': spent,
          'learning_rates': sorted({r['learning_rate'] for r in done}),
          'lr_sources': sorted({r['lr_source'] for r in done}),
          'runs': [r['workdir'] for r in done]}
    return {
        'checkpoint': self.checkpoint, 'paper_column': column,
        'rows': rows, 'core_hours': composer.core_hours,
        'pretraining_core_days': (None if hours is None else hours / 24),
        'paper_core_days': paper.get('core_days'),
        'lr_table_source': getattr(self.module, 'LR_SOURCE', None),
        'stopped': (None if stopped is None else
                    {'where': stopped.where, 'status': str(stopped.status)})}


def _value(mean: Optional[float], std: Optional[float]) -> str:
  if mean is None:
    return '-'
  return f'{mean:.2f}' + (f' ± {std:.2f}' if std is not None else '')


def _days(days: Optional[float]) -> str:
  if days is None:
    return 'unknown'
  return f'{days / 1000:.2g}k' if days >= 100 else f'{days:.3g}'


def markdown(table: dict) -> str:
  """The column in the paper's form, with runs, core-hours and the paper's."""
  column = table['paper_column']
  head = ['', 'ours', 'seeds', 'core-hours', 'lr (source)']
  if column:
    head.append(f'paper: {column}')
  lines = [f'Table 2 column of `{table["checkpoint"]}`: top-1 (%), mean ± '
           f'sample std (ddof=1) over seeds; core-hours and core-days of '
           f'the devices that ran (the paper\'s: TPUv3 cores).', '',
           '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for row in table['rows'].values():
    for i, line in enumerate(row['lines'].values()):
      rates = ', '.join(f'{r:g}' for r in row['learning_rates'])
      cells = [line['label'], _value(line['mean'], line['std']),
               f'{row["seeds_done"]}/{row["seeds"]}',
               f'{row["core_hours"]:.4g}' if i == 0 else '(same runs)',
               f'{rates} ({", ".join(row["lr_sources"])})' if i == 0 else '']
      if column:
        paper = line['paper']
        cells.append(_value(*paper) if paper else '-')
      lines.append('| ' + ' | '.join(cells) + ' |')
  total = ['**total (fine-tuning)**', '', '', f'{table["core_hours"]:.4g}', '']
  days = ['pretraining core-days',
          _days(table['pretraining_core_days']), '', '', '']
  if column:
    total.append('')
    days.append(_days(table['paper_core_days']))
  lines += ['| ' + ' | '.join(total) + ' |', '| ' + ' | '.join(days) + ' |']
  if table['stopped']:
    lines += ['', f'Stopped early ({table["stopped"]["where"]}: '
              f'{table["stopped"]["status"]}); rerun the same command to '
              f'resume.']
  return '\n'.join(lines) + '\n'


# ------------------------------------------------------------------- CLI


def parse_overrides(items: Sequence[str]) -> dict:
  """['model.dtype=float32', 'log_every=1'] -> {key: value} (Python literals
  where they parse, else strings)."""
  overrides = {}
  for item in items or ():
    key, sep, text = item.partition('=')
    if not sep or not key:
      raise ValueError(f'--override {item!r} is not KEY=VALUE, e.g. '
                       f'model.dtype=float32.')
    try:
      overrides[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      overrides[key] = text
  return overrides


def _define_flags():
  """The command's flags (defined only when it runs: tests import the module
  beside vit_jax.main, whose --workdir would clash)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('checkpoint', None, 'A released .npz, a run\'s workdir '
                      'or a transformers directory.')
  flags.DEFINE_string('workdir', None, 'Where every run and the table go.')
  flags.DEFINE_string('rows', 'all', 'Rows joined by ",": ' + ', '.join(ROWS)
                      + '; all: the paper\'s (digits only when named).')
  flags.DEFINE_integer('seeds', 3, 'Fine-tuning runs per row (seeds 0..N-1).')
  flags.DEFINE_string('lr', '', 'Given learning rates, ROW=RATE joined by ","'
                      ' (default: a sweep in W/ROW, else the recipe\'s table).')
  # Not --config: cli.parse_flags reads that one as a config_flags file.
  flags.DEFINE_string('finetune_config', 'configs/finetune.py', 'The '
                      'fine-tuning config file (its final protocol).')
  flags.DEFINE_string('config_args', '', 'Extra NAME=VALUE arguments of the '
                      'config file for every row, e.g. steps=100,batch=64.')
  flags.DEFINE_multi_string('override', [], 'KEY=VALUE set on every '
                            'fine-tuning config, e.g. '
                            '--override=model.dtype=float32.')
  flags.DEFINE_float('max_core_hours', None, 'Compute cap for the whole '
                     'table (exit 75 when reached; rerun to resume).')
  flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
  flags.adopt_module_key_flags(cli)
  return flags.FLAGS


def main(argv) -> None:
  flags = sys.modules['absl.flags'].FLAGS
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; pass options as --flag=value.')
  for name, example in (('checkpoint', 'ViT-L_16.npz or runs/pretrain'),
                        ('workdir', 'runs/table2')):
    if not flags[name].value:
      cli.fail(f'--{name} is required, e.g. --{name}={example}')
  cli.configure_logging()
  train_checkpoint.install_run_hooks()  # A failed save: one line, exit 74.
  with preemption.handled():  # SIGTERM from here on: saved, exit 0.
    try:
      cli.start_distributed()
      with parallel.lost_peer_explains_errors():
        table = Table(
            flags.checkpoint, flags.workdir, rows=select_rows(flags.rows),
            config_module=load_config_file(flags.finetune_config), seeds=flags.seeds,
            rates=parse_rates(flags.lr), config_args=flags.config_args,
            overrides=parse_overrides(flags.override),
            max_core_hours=flags.max_core_hours,
            data_dir=flags.data_dir).run()
    except train.NonFiniteLossError as e:
      cli.fail(str(e), status=1)
    except (ValueError, FileNotFoundError, KeyError) as e:
      cli.fail(cli.message_of(e))
  if jax.process_index() == 0:
    print(markdown(table), flush=True)
    print(f'wrote {os.path.join(flags.workdir, MARKDOWN)} and '
          f'{os.path.join(flags.workdir, JSON)}', flush=True)
  if (table['stopped'] or {}).get('status') == train.RunStatus.BUDGET_EXHAUSTED:
    sys.exit(train.EXIT_BUDGET_EXHAUSTED)


def _parse_flags(argv: list[str]) -> list[str]:
  """--help as the other entry points; a bad flag is one line, exit 2."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  cli.exit_on_help(argv)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    cli.fail(str(e))


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=_parse_flags)
