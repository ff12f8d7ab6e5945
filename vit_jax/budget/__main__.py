"""`python -m vit_jax.budget` is now `python -m vit_jax.planner`: one line naming the command, exit status 2.

The planner (plan, fit, paper, report, plot) moved out of this package so
that the training loop imports only the accounting; this module does not
run it (the budget package never imports the planner).
"""

import shlex
import sys


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  command = shlex.join(['python', '-m', 'vit_jax.planner', *argv])
  print(f'python -m vit_jax.budget: error: the planner moved; run: {command}',
        file=sys.stderr)
  return 2


if __name__ == '__main__':
  sys.exit(main())
