"""The training loop, shared by pretraining and fine-tuning.

`train_and_evaluate(config, workdir)` reads top to bottom: check the inputs,
build the mesh, data, model and optimizer, restore or initialise the state,
compile the step, then loop: step, log, evaluate, checkpoint, until the last
step, a preemption, a non-finite loss or the compute cap ends the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from vit_jax import (assembly, budget, checkpoint, class_names, config_lib,
                     data, evaluate, files, models, parallel, pretrained,
                     profiling)
from vit_jax import metrics as metrics_lib
from vit_jax import preemption
from vit_jax import resume_check
from vit_jax import workdir as workdir_lib
from vit_jax.train_checkpoint import SaveError, TrainCheckpointer  # pylint: disable=unused-import
from vit_jax.workdir_lock import WorkdirLock

#: Exit status when the compute cap stopped the run (see vit_jax.budget).
EXIT_BUDGET_EXHAUSTED = budget.EXIT_BUDGET_EXHAUSTED
#: Exit status when a checkpoint could not be written (disk full, I/O error).
EXIT_SAVE_FAILED = 74


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or Inf; the last good checkpoint stays the latest."""


class RunStatus(enum.StrEnum):
  """How a run ended; str-valued, so JSON and the SUMMARY line read 'done'."""
  DONE = 'done'
  PREEMPTED = 'preempted'                # SIGTERM: saved, rerun to resume.
  BUDGET_EXHAUSTED = 'budget_exhausted'  # The compute cap: saved, exit 75.


@dataclasses.dataclass
class TrainResult:
  """How a run ended and what it measured.

  The parameters are in the workdir: `params.npz` (exported when done) and
  its checkpoints (`train_checkpoint.read_params`).
  """
  status: RunStatus
  step: int
  total_steps: int
  eval_metrics: dict
  img_per_sec: Optional[float]
  core_hours: float
  stopped_in: Optional[str] = None  # The transfer run that stopped, if any.


# ----------------------------------------------------------------- building


def _initial_params(config, abstract_params) -> Optional[Any]:
  """Host parameters from `init_from` (a released .npz or a run), or None.

  `load_pretrained` resamples the position embeddings to this model's grid,
  replaces the whole head by a zero layer as the paper transfers (unless
  `init_keep_head`: continuing on the same label space), and refuses what
  does not fit.
  """
  if not config.init_from:
    return None
  tree, _ = pretrained.read(config.init_from)
  return checkpoint.load_pretrained(tree, abstract_params,
                                    name=config.init_from,
                                    keep_head=config.init_keep_head)


#: What a fine-tuning run takes from the run it starts from (init_from).
_ARCHITECTURE = ('name', *models.ARCHITECTURE_KEYS, 'classifier', 'posemb',
                 'gelu_approximate')


def resolve_model(config) -> None:
  """A config without a model name takes the architecture of its init run.

  Fine-tuning from a run's workdir (`init_from=runs/quickstart`) needs no
  copied overrides: the run's config.json says what the model is.
  """
  if config.model.name:
    return
  run = pretrained.run_config(config.init_from) if config.init_from else None
  if not run:
    raise ValueError('model.name is empty: name a registered model (e.g. '
                     'ViT-B/16), or set init_from to a run directory (or a '
                     'transformers directory) whose config.json says it.')
  for key in _ARCHITECTURE:
    if key in run['model']:
      config.model[key] = run['model'][key]


_VERDICTS = tuple(budget.Verdict)


def _agreed(verdict: budget.Verdict) -> budget.Verdict:
  """Process 0's cap verdict on every process.

  Each process times its own clock, so their core-hours differ slightly; if
  one stopped while the others trained on, the checkpoint would wait forever.
  """
  if jax.process_count() == 1:
    return verdict
  code = multihost_utils.broadcast_one_to_all(
      np.int32(_VERDICTS.index(verdict)))
  return _VERDICTS[int(code)]


class _Window:
  """Training metrics since the last log line, read back one step late.

  The device runs step s+1 while the host waits for the loss of step s, so
  the host never idles the accelerator. A NaN/Inf loss, or parameters that an
  update overflowed, raise NonFiniteLossError naming the step and the last
  good checkpoint (the last of `kept_steps()`) and the rollback step.
  """

  def __init__(self, kept_steps):
    self._kept_steps = kept_steps
    self._pending = None
    self._reset()

  def _reset(self):
    self.losses, self.grad_norms, self.lr = [], [], None

  def push(self, step: int, metrics: dict) -> None:
    self.settle()
    self._pending = (step, metrics)

  def settle(self) -> None:
    """Reads the pending step's metrics (waits for that step)."""
    if self._pending is None:
      return
    step, metrics = self._pending
    self._pending = None
    metrics = jax.device_get(metrics)
    loss = float(metrics['train_loss'])
    param_norm = float(metrics['param_norm'])
    # The loss of step s comes from the parameters before it; the norm of
    # the updated ones catches an update that overflowed.
    if not (np.isfinite(loss) and np.isfinite(param_norm)):
      kept = self._kept_steps()
      earlier = kept[-2] if len(kept) > 1 else None
      raise NonFiniteLossError(
          f'the training loss is {loss} (parameter norm {param_norm}) at step '
          f'{step}; stopping. The last good checkpoint '
          f'({kept[-1] if kept else None}) stays the latest: lower the '
          f'learning rate or check the data, then rerun'
          + (f' (add --config.resume_from_step={earlier} to resume from the '
             f'earlier step {earlier} if step {kept[-1]} already diverged).'
             if earlier is not None else '.'))
    self.losses.append(loss)
    self.grad_norms.append(float(metrics['grad_norm']))
    self.lr = float(metrics['learning_rate'])

  def state_dict(self) -> dict:
    """The settled window, saved in checkpoints so a resume logs the same means."""
    return {'losses': list(self.losses), 'grad_norms': list(self.grad_norms),
            'lr': self.lr}

  def load_state_dict(self, d: Optional[dict]) -> None:
    if d:
      self.losses, self.grad_norms = list(d['losses']), list(d['grad_norms'])
      self.lr = d['lr']

  def summary(self) -> dict:
    """Means since the last summary, after settling the pending step."""
    self.settle()
    out = {'train_loss': float(np.mean(self.losses)),
           'learning_rate': self.lr,
           'grad_norm': float(np.mean(self.grad_norms))}
    self._reset()
    return out


def check_classes(num_classes: int, train_data) -> None:
  """A class count that disagrees with a source that knows its classes."""
  source_classes = getattr(getattr(train_data, 'source', None), 'num_classes',
                           None)
  if (getattr(train_data, 'random_access', False) and source_classes and
      num_classes != source_classes):
    raise ValueError(
        f'num_classes={num_classes} but {train_data.source.description} has '
        f'{source_classes} classes; set num_classes={source_classes} (and '
        f'onehot({source_classes}) in the preprocessing).')
  if num_classes != train_data.num_classes:
    raise ValueError(
        f'num_classes={num_classes} but the preprocessing makes labels of '
        f'width {train_data.num_classes}; make onehot(K) in input.pp and '
        f'num_classes agree.')


class _LogStep:
  """What a log step does: metrics, due evaluations, the line, the cap.

  Called with the parameters the evaluators score; returns the cap's verdict,
  agreed across processes (at log steps only: a blocking collective every
  step would defeat the one-step-late read of the metrics).
  """

  def __init__(self, config, window: '_Window', tracker, evaluators, writer,
               cap, start_step: int):
    self._config, self._window, self._tracker = config, window, tracker
    self._evaluators, self._writer, self._cap = evaluators, writer, cap
    self._progress = metrics_lib.Progress(config.total_steps, start_step)
    self.eval_metrics: dict = {}  # The latest score of every evaluator.
    self.img_per_sec: Optional[float] = None

  def __call__(self, step: int, params, *, last: bool) -> budget.Verdict:
    tracker = self._tracker
    scalars = self._window.summary()
    scalars.update(tracker.metrics())  # img/s, per core, MFU, core-hours.
    scalars.setdefault('mfu', None)  # Unknown peak (e.g. CPU): no guess.
    self.img_per_sec = scalars.get('img_per_sec', self.img_per_sec)
    evaluated = _run_evals(self._evaluators, params, step, tracker,
                           force=last)
    scalars.update(evaluated)
    self.eval_metrics.update(evaluated)
    self._writer.write(step, scalars)
    rate, eta = self._progress.update(step)
    metrics_lib.log_line(step, self._config.total_steps, scalars, rate, eta)
    self._progress.reset_clock()
    if not self._cap.enabled:
      return budget.Verdict.OK
    verdict = _agreed(self._cap.check(tracker.core_hours))
    if verdict == budget.Verdict.WARN:
      logging.warning('%s', self._cap.warn_message(tracker.core_hours))
    return verdict


def _run_evals(evaluators, params, step: int, tracker, force: bool = False
               ) -> dict:
  """{'name/metric': value} of the evaluators due at `step` (all if forced)."""
  results = {}
  for ev in evaluators:
    if force or (ev.every and step % ev.every == 0):
      with tracker.paused('eval'):
        for k, v in ev.run(params).items():
          results[f'{ev.name}/{k}'] = v
  metrics_lib.log_evals(step, results)
  return results


# --------------------------------------------------------------------- loop


@dataclasses.dataclass
class _Setup:
  """What a run builds before it touches its workdir; every input checked."""
  mesh: Any
  tracker: budget.CoreHoursTracker
  train_data: Any
  asm: assembly.Assembly
  evaluators: list
  cap: budget.BudgetCap


def _build(config) -> _Setup:
  """Checks and builds everything a run needs short of its workdir: the
  image size against the model's tokens and the preprocessing, the mesh
  and batch, the data and its classes, the step, the evaluators (their
  preprocessing too). A bad input is one line here, before any file of the
  workdir exists and before anything compiles."""
  models.check_image_size(models.build(config.model, None)[1],
                          config.image_size)
  mesh = parallel.make_mesh(dict(config.mesh))
  # Core-hours count every second the devices are held, from here to exit.
  tracker = budget.CoreHoursTracker(jax.devices()[0].device_kind,
                                    jax.device_count())
  tracker.hold()
  parallel.check_batch_divisible(config.batch_size, config.accum_steps, mesh)
  train_data = data.build_train(
      config.input, global_batch_size=config.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  data.check_image_size(train_data, config.image_size)
  num_classes = config.num_classes or train_data.num_classes
  check_classes(num_classes, train_data)
  asm = assembly.assemble(config, mesh, num_classes)
  evaluators = evaluate.build_evaluators(
      config.evals, model=asm.model, mesh=mesh, image_size=config.image_size,
      num_classes=num_classes, data_dir=config.input.get('data_dir'))
  tracker.flops_per_image = asm.flops_per_image
  return _Setup(mesh=mesh, tracker=tracker, train_data=train_data, asm=asm,
                evaluators=evaluators,
                cap=budget.BudgetCap.from_config(config.budget))


def train_and_evaluate(config, workdir: str) -> TrainResult:
  """Trains `config` in `workdir`, resuming from its latest good checkpoint.

  Every input is checked before the workdir is created or locked; the run
  holds the workdir's lock throughout (a second run is refused).
  """
  config_lib.check_schema(config)
  resolve_model(config)  # Before the resume check: config.json holds it.
  setup = _build(config)
  workdir = workdir_lib.check_workdir(workdir)
  with preemption.handled(), WorkdirLock(workdir):
    resume_check.check_resume_config(workdir, config)
    return _train_and_evaluate(config, workdir, setup)


def _train_and_evaluate(config, workdir: str, setup: _Setup) -> TrainResult:
  mesh, tracker, asm = setup.mesh, setup.tracker, setup.asm
  train_data, evaluators, cap = setup.train_data, setup.evaluators, setup.cap
  device_kind = jax.devices()[0].device_kind
  is_primary = jax.process_index() == 0

  # 2. The resources the loop owns, closed in one place whatever happens.
  with contextlib.ExitStack() as resources:
    checkpointer = TrainCheckpointer(workdir, keep=config.keep_checkpoints,
                                     keep_every=config.keep_checkpoint_every)
    resources.callback(checkpointer.close)

    # 3. State: resume this workdir, or start fresh (optionally init_from).
    state, resumed = _restore_or_init(config, asm, checkpointer, workdir)
    tracker.load_state_dict((resumed or {}).get('budget', {}))
    start_step = int(jax.device_get(state['step']))
    if is_primary:
      files.write_json(os.path.join(workdir, workdir_lib.CONFIG),
                       config.to_dict())
    class_names.write_class_names(workdir, train_data)  # For predict, export.

    # 4. The compiled step and the metric writers.
    with tracker.paused('compile'):
      compiled = asm.lower().compile()
    writer = metrics_lib.MetricWriter(
        workdir, is_primary=is_primary,
        resume_step=start_step if resumed is not None else None)
    resources.callback(writer.close)
    window = _Window(checkpointer.all_steps)
    window.load_state_dict((resumed or {}).get('window'))
    log = _LogStep(config, window, tracker, evaluators, writer, cap,
                   start_step)

    def save(step, state):
      window.settle()  # Every step is read before anything is saved after it.
      with tracker.paused('checkpoint'):
        checkpointer.save(step, state, {
            'step': step, 'model': asm.label,
            'budget': tracker.state_dict(), 'window': window.state_dict(),
            'rolled_back_to': config.resume_from_step})

    def eval_params(state):
      return state['ema_params'] if asm.ema else state['params']

    # 5. The loop.
    logging.info('Training %s (%s parameters) for %d steps on %d %s '
                 'device(s), mesh %s, batch %d.', asm.label,
                 f'{models.count_params(asm.abstract_params):,}',
                 config.total_steps, jax.device_count(), device_kind,
                 dict(mesh.shape), config.batch_size)
    batches = train_data.iterator(start_batch=start_step)
    status, step = RunStatus.DONE, start_step
    profiler = profiling.ProfileWindow.from_config(config.get('profile'),
                                                   workdir)
    tracker.start_training()  # Input wait is a part of training time.
    if preemption.requested() and step < config.total_steps:
      status = RunStatus.PREEMPTED
      logging.warning('%s', preemption.BEFORE_TRAINING)
    # A SIGTERM during a step is seen by `reached` below: the step is saved.
    while status == RunStatus.DONE and step < config.total_steps:
      with tracker.waiting_for_input():
        host_batch = next(batches)
      batch = parallel.host_to_global(host_batch, mesh)
      checkpointer.check_for_errors()  # A failed save ends the run here.
      profiler.before(step)
      state, step_metrics = compiled(state, batch)
      profiler.after(step, step_metrics)
      step += 1
      tracker.add_images(config.batch_size)
      # Read the previous step's metrics while this one runs.
      window.push(step, step_metrics)

      last = step == config.total_steps
      verdict = budget.Verdict.OK
      if step % config.log_every == 0 or last:
        verdict = log(step, eval_params(state), last=last)

      # One stop path: the cap or a preemption saves, then ends the run.
      stop = (RunStatus.BUDGET_EXHAUSTED if verdict == budget.Verdict.STOP
              else RunStatus.PREEMPTED if preemption.reached(step) else None)
      if stop or step % config.checkpoint_every == 0 or last:
        save(step, state)
      if stop:
        status = stop
        logging.warning('%s', cap.stop_message(tracker.core_hours, workdir)
                        if stop == RunStatus.BUDGET_EXHAUSTED else
                        f'Preemption requested: saved step {step} to '
                        f'{workdir}; rerun the same command to resume.')
        break
    window.settle()
    profiler.stop()
    if start_step >= config.total_steps:  # A finished run: report its scores.
      logging.info('The run in %s is already complete (step %d).', workdir,
                   start_step)
      log.eval_metrics = _run_evals(evaluators, eval_params(state), step,
                                    tracker, force=True)

  if status == RunStatus.DONE and config.export_npz:
    _export_npz(eval_params(state), os.path.join(workdir, workdir_lib.PARAMS),
                is_primary)
  tracker.stop()  # The devices are released.
  return TrainResult(status=status, step=step, total_steps=config.total_steps,
                     eval_metrics=log.eval_metrics, img_per_sec=log.img_per_sec,
                     core_hours=tracker.core_hours)


def _restore_or_init(config, asm: assembly.Assembly,
                     checkpointer: TrainCheckpointer, workdir: str
                     ) -> tuple[Any, Optional[dict]]:
  """(state, the resumed checkpoint's meta, None when fresh): the workdir's latest good
  checkpoint (after a requested roll-back), else a fresh state around
  `init_from`'s parameters, else a random one."""
  if config.resume_from_step is not None and not _rolled_back(
      checkpointer, config.resume_from_step):
    checkpointer.roll_back(config.resume_from_step)
  step, state, meta = checkpointer.restore_latest_good(asm.abstract_state,
                                                       asm.shardings)
  if step is not None:
    logging.info('Resumed from step %d in %s.', step, workdir)
    return state, meta or {}
  loaded = _initial_params(config, asm.abstract_params)
  if loaded is None:
    return asm.init_state(), None
  logging.info('Initialised parameters from %s.', config.init_from)
  return asm.state_from_params(loaded), None


def _rolled_back(checkpointer: TrainCheckpointer, step: int) -> bool:
  """Whether the latest checkpoint was saved after rolling back to `step`."""
  latest = checkpointer.latest_step()
  if latest is None or latest <= step:
    return True
  try:
    return checkpointer.restore_meta(latest).get('rolled_back_to') == step
  except Exception:  # pylint: disable=broad-except
    return False  # Unreadable: roll back (it is moved aside, not deleted).


def _export_npz(params, path: str, is_primary: bool) -> None:
  """Writes the final parameters in the released layout (other tools read it)."""
  host = parallel.global_to_host(params)
  if is_primary:
    checkpoint.save_npz(path, host)
