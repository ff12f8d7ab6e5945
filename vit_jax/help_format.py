"""The --help layout of every argparse command line (vit_jax's and launch's): each option's default, said once.

argparse's ArgumentDefaultsHelpFormatter appends "(default: X)" to every
option, also where there is no default (None: "--mfu ... (default 0.5)
(default: None)") and where the help already says what the default is. This
one appends it only where it tells something: a default other than None,
and a help text that does not already give one ("(default ...").

    parser = argparse.ArgumentParser(formatter_class=help_format.Formatter)
"""

import argparse


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
  """ArgumentDefaultsHelpFormatter without "(default: None)" and without a
  second default where the help names its own."""

  def _get_help_string(self, action):
    text = action.help or ''
    if action.default is None or '(default' in text:
      return text
    return super()._get_help_string(action)
