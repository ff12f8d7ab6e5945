"""The training loop, shared by pretraining and fine-tuning.

`train_and_evaluate(config, workdir)` reads top to bottom: check the inputs,
build the mesh, data, model and optimizer, restore or initialise the state,
compile the step, then loop: step, log, evaluate, checkpoint, until the last
step, a preemption, a non-finite loss or the compute cap ends the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import budget, optim, parallel, train_step
from vit_jax import metrics as metrics_lib
from vit_jax import models
from vit_jax.train_checkpoint import TrainCheckpointer

#: Exit status when the compute cap stopped the run (see vit_jax.budget).
EXIT_BUDGET_EXHAUSTED = budget.EXIT_BUDGET_EXHAUSTED


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or Inf; the last good checkpoint stays the latest."""


@dataclasses.dataclass
class TrainResult:
  """How a run ended and what it measured."""
  status: str                  # 'done', 'preempted' or 'budget_exhausted'
  step: int
  total_steps: int
  eval_metrics: dict
  img_per_sec: Optional[float]
  core_hours: float
  params: Any = None           # Final parameters (global arrays).


# ----------------------------------------------------------------- building


def check_workdir(workdir: str) -> str:
  """Absolute workdir that exists and is writable, or a one-line error."""
  if '://' in workdir:
    return workdir
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test_{jax.process_index()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise ValueError(f'--workdir={workdir} cannot be written ({e.strerror}); '
                     f'choose a directory you can write to.') from None
  return workdir


def model_overrides(model_config) -> dict:
  """VisionTransformer fields from the config (None: the registry's value)."""
  overrides = {k: v for k, v in model_config.items() if k != 'name'}
  if overrides.get('patch_size') is not None:
    p = overrides['patch_size']
    overrides['patch_size'] = (p, p) if isinstance(p, int) else tuple(p)
  return {k: v for k, v in overrides.items() if v is not None}


def build_model(model_config, num_classes: int):
  """The module and the ModelSpec (with overrides) the FLOP count uses."""
  overrides = model_overrides(model_config)
  model = models.get_model(model_config.name, num_classes, **overrides)
  spec = models.get_spec(model_config.name)
  arch = {k: overrides[k] for k in ('hidden_size', 'num_layers', 'mlp_dim',
                                    'num_heads', 'patch_size') if k in overrides}
  spec = dataclasses.replace(spec, **arch)
  return model, spec


def image_shape(config) -> tuple[int, int, int]:
  size = config.image_size
  return (size, size, 3) if isinstance(size, int) else (*size, 3)


def _initial_params(config, abstract_params) -> Optional[Any]:
  """Host parameters from `init_from` (a released .npz or a run), or None.

  `load_pretrained` resamples the position embeddings to this model's grid,
  zeroes a head of another class count, and refuses what does not fit.
  """
  if not config.init_from:
    return None
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from vit_jax import train_checkpoint  # pylint: disable=g-import-not-at-top
  path = config.init_from
  source = path if path.endswith('.npz') else train_checkpoint.restore_params(
      path)
  return checkpoint.load_pretrained(source, abstract_params, name=path)


class _Preemption:
  """SIGTERM sets a flag; the loop saves and exits at the next step boundary."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested


_VERDICTS = ('ok', 'warn', 'stop')


def _agreed(verdict: str) -> str:
  """Process 0's cap verdict on every process.

  Each process times its own clock, so their core-hours differ slightly; if
  one stopped while the others trained on, the checkpoint would wait forever.
  """
  if jax.process_count() == 1:
    return verdict
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  code = multihost_utils.broadcast_one_to_all(
      np.int32(_VERDICTS.index(verdict)))
  return _VERDICTS[int(code)]


class _Window:
  """Training metrics since the last log line, read back one step late.

  The device runs step s+1 while the host waits for the loss of step s, so
  the host never idles the accelerator. A NaN/Inf loss, or parameters that an
  update overflowed, raise NonFiniteLossError naming the step.
  """

  def __init__(self, checkpointer: TrainCheckpointer):
    self._checkpointer = checkpointer
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
    loss = float(metrics['train_loss'])
    param_norm = float(metrics['param_norm'])
    # The loss of step s comes from the parameters before it; the norm of
    # the updated ones catches an update that overflowed.
    if not (np.isfinite(loss) and np.isfinite(param_norm)):
      self._checkpointer.close()
      raise NonFiniteLossError(
          f'the training loss is {loss} (parameter norm {param_norm}) at step '
          f'{step}; stopping. The last good checkpoint '
          f'({self._checkpointer.latest_step()}) stays the latest: lower the '
          f'learning rate or check the data, then rerun.')
    self.losses.append(loss)
    self.grad_norms.append(float(metrics['grad_norm']))
    self.lr = float(metrics['learning_rate'])

  def summary(self) -> dict:
    """Means since the last summary, after settling the pending step."""
    self.settle()
    out = {'train_loss': float(np.mean(self.losses)),
           'learning_rate': self.lr,
           'grad_norm': float(np.mean(self.grad_norms))}
    self._reset()
    return out


# --------------------------------------------------------------------- loop


def train_and_evaluate(config, workdir: str) -> TrainResult:
  """Trains `config` in `workdir`, resuming from its latest checkpoint."""
  from vit_jax import data  # pylint: disable=g-import-not-at-top
  from vit_jax import evaluate  # pylint: disable=g-import-not-at-top

  # 1. Inputs that could be wrong are checked before anything compiles.
  workdir = check_workdir(workdir)
  mesh = parallel.make_mesh(dict(config.mesh))
  device_kind = jax.devices()[0].device_kind
  # Core-hours count every second the devices are held, from here to exit.
  tracker = budget.CoreHoursTracker(device_kind, jax.device_count())
  tracker.hold()
  parallel.check_batch_divisible(config.batch_size, config.accum_steps, mesh)
  is_primary = jax.process_index() == 0
  train_data = data.build_train(
      config.input, global_batch_size=config.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  num_classes = config.num_classes or train_data.num_classes
  model, spec = build_model(config.model, num_classes)

  schedule = optim.make_schedule(total_steps=config.total_steps,
                                 **dict(config.schedule))
  shape = image_shape(config)
  abstract_params = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape))))['params']
  tx = optim.make_optimizer(config.optim, schedule, abstract_params)
  rules = [tuple(r) for r in config.sharding.rules]
  ema = config.ema_decay is not None

  def init():
    return train_step.init_state(model, tx, shape, seed=config.seed, ema=ema)
  abstract_state = jax.eval_shape(init)
  shardings = parallel.tree_shardings(abstract_state, mesh, rules,
                                      config.sharding.fsdp_min_size)

  # 2. State: resume this workdir, or start fresh (optionally from init_from).
  checkpointer = TrainCheckpointer(workdir, keep=config.keep_checkpoints,
                                   keep_every=config.keep_checkpoint_every)
  tracker.flops_per_image = budget.train_flops_per_image(
      spec, config.image_size, num_classes, model.representation_size,
      model.classifier)
  resume_step = checkpointer.latest_step()
  if resume_step is not None:
    state, meta = checkpointer.restore(abstract_state, shardings)
    tracker.load_state_dict(meta.get('budget', {}))
    logging.info('Resumed from step %d in %s.', resume_step, workdir)
  else:
    state = jax.jit(init, out_shardings=shardings)()
    loaded = _initial_params(config, abstract_params)
    if loaded is not None:
      state['params'] = parallel.put_sharded(loaded, shardings['params'])
      if ema:
        state['ema_params'] = parallel.put_sharded(loaded,
                                                   shardings['ema_params'])
      logging.info('Initialised parameters from %s.', config.init_from)
  start_step = int(jax.device_get(state['step']))
  if is_primary:
    _write_json(os.path.join(workdir, 'config.json'), config.to_dict())

  # 3. The compiled step, evaluators, metrics and the compute accounting.
  step_fn = train_step.make_train_step(
      model, tx, mesh, shardings, loss=config.loss,
      label_smoothing=config.label_smoothing, accum_steps=config.accum_steps,
      ema_decay=config.ema_decay, seed=config.seed, schedule=schedule)
  batch_shape = {
      'image': jax.ShapeDtypeStruct((config.batch_size, *shape), jnp.float32),
      'labels': jax.ShapeDtypeStruct((config.batch_size, num_classes),
                                     jnp.float32)}
  with tracker.paused('compile'):
    compiled = step_fn.lower(state, batch_shape).compile()
  evaluators = evaluate.build_evaluators(
      config.evals, model=model, mesh=mesh, image_size=config.image_size,
      num_classes=num_classes, data_dir=config.input.get('data_dir'),
      workdir=workdir, model_config=config.model, mesh_config=config.mesh)
  writer = metrics_lib.MetricWriter(workdir, is_primary=is_primary,
                                    resume_step=resume_step)
  cap = budget.BudgetCap.from_config(config.budget)
  progress = metrics_lib.Progress(config.total_steps, start_step)

  def meta(step):
    return {'step': step, 'data_position': step, 'model': config.model.name,
            'budget': tracker.state_dict()}

  def save(step):
    with tracker.paused('checkpoint'):
      checkpointer.save(step, state, meta(step))

  def run_evals(step, force=False):
    results = {}
    params = state['ema_params'] if ema else state['params']
    for ev in evaluators:
      if force or (ev.every and step % ev.every == 0):
        with tracker.paused('eval'):
          for k, v in ev.run(params).items():
            results[f'{ev.name}/{k}'] = v
    return results

  # 4. The loop.
  logging.info('Training %s (%s parameters) for %d steps on %d %s device(s), '
               'mesh %s, batch %d.', config.model.name,
               f'{models.count_params(abstract_params):,}', config.total_steps,
               jax.device_count(), device_kind, dict(mesh.shape),
               config.batch_size)
  batches = train_data.iterator(start_batch=start_step)
  status, step, eval_metrics = 'done', start_step, {}
  window = _Window(checkpointer)
  img_per_sec = None
  with _Preemption() as preemption:
    tracker.start_training()  # Input wait is a part of training time.
    while step < config.total_steps:
      with tracker.waiting_for_input():
        host_batch = next(batches)
      batch = parallel.host_to_global(host_batch, mesh)
      state, step_metrics = compiled(state, batch)
      step += 1
      tracker.add_images(config.batch_size)
      # Read the previous step's metrics while this one runs; every step is
      # read before anything is logged or saved after it.
      window.push(step, step_metrics)

      last = step == config.total_steps
      if step % config.log_every == 0 or last:
        scalars = window.summary()
        scalars.update(tracker.metrics())  # img/s, per core, MFU, core-hours.
        scalars.setdefault('mfu', None)  # Unknown peak (e.g. CPU): no guess.
        img_per_sec = scalars.get('img_per_sec', img_per_sec)
        evaluated = run_evals(step, force=last)
        scalars.update(evaluated)
        eval_metrics.update(evaluated)
        writer.write(step, scalars)
        rate, eta = progress.update(step)
        metrics_lib.log_line(step, config.total_steps, scalars, rate, eta)
        progress.reset_clock()

      verdict = _agreed(cap.check(tracker.core_hours)) if cap.enabled else 'ok'
      if verdict == 'warn':
        logging.warning('%s', cap.warn_message(tracker.core_hours))
      if verdict == 'stop':
        window.settle()
        save(step)
        status = 'budget_exhausted'
        logging.warning('%s', cap.stop_message(tracker.core_hours, workdir))
        break
      if preemption.reached(step):
        window.settle()
        save(step)
        status = 'preempted'
        logging.warning('Preemption requested: saved step %d to %s; rerun '
                        'the same command to resume.', step, workdir)
        break
      if step % config.checkpoint_every == 0 or last:
        window.settle()
        save(step)
    window.settle()
  if start_step >= config.total_steps:  # A finished run: report its scores.
    logging.info('The run in %s is already complete (step %d).', workdir,
                 start_step)
    eval_metrics = run_evals(step, force=True)
  checkpointer.close()
  writer.close()

  if status == 'done' and config.export_npz:
    _export_npz(state['ema_params'] if ema else state['params'],
                os.path.join(workdir, 'params.npz'), is_primary)
  tracker.stop()  # The devices are released.
  return TrainResult(status=status, step=step, total_steps=config.total_steps,
                     eval_metrics=eval_metrics, img_per_sec=img_per_sec,
                     core_hours=tracker.core_hours, params=state['params'])


def _export_npz(params, path: str, is_primary: bool) -> None:
  """Writes the final parameters in the released layout (other tools read it)."""
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  host = parallel.global_to_host(params)
  if is_primary:
    checkpoint.save_npz(path, host)


def _write_json(path: str, obj: Any) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, default=str)
  os.replace(tmp, path)
