"""Performance versus compute: eval accuracy and training loss against core-hours."""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence

from vit_jax.planner import report as report_lib


def plot_runs(workdirs: Sequence[str], out_path: str,
              metric: Optional[str] = None, logx: bool = False) -> str:
  """Writes a PNG with two panels (eval metric, train loss vs core-hours).

  `metric` defaults to the first evaluation metric a run logged ('val/top1'
  first). Returns the path written; the file appears whole or not at all.
  """
  if not workdirs:
    raise ValueError('give at least one workdir to plot.')
  if not out_path.lower().endswith('.png'):
    raise ValueError(f'the plot is a PNG: give an --out path ending in .png, '
                     f'got {out_path!r}.')
  runs = [(os.path.basename(os.path.normpath(w)),
           report_lib.trajectory(report_lib.read_metrics(w))) for w in workdirs]
  if metric is None:
    keys = report_lib.eval_keys([r for _, rows in runs for r in rows])
    metric = keys[0] if keys else None

  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax_eval, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
  for name, rows in runs:
    for ax, key, style in ((ax_eval, metric, 'o-'), (ax_loss, 'train_loss', '-')):
      points = [(r['core_hours'], r[key]) for r in rows
                if key and key in r and 'core_hours' in r]
      if points:
        ax.plot(*zip(*points), style, label=name, markersize=3)
  ax_eval.set_title(metric or 'no evaluation metric logged')
  ax_eval.set_ylabel(metric or '')
  ax_loss.set_title('training loss')
  ax_loss.set_ylabel('train_loss')
  for ax in (ax_eval, ax_loss):
    ax.set_xlabel('training core-hours')
    if logx:
      ax.set_xscale('log')
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  fig.tight_layout()
  directory = os.path.dirname(os.path.abspath(out_path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.png.tmp', dir=directory)
  try:
    with os.fdopen(fd, 'wb') as f:
      fig.savefig(f, format='png', dpi=110)
    os.replace(tmp, out_path)
  except BaseException:
    os.unlink(tmp)
    raise
  finally:
    plt.close(fig)
  return out_path
