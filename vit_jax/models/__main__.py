"""Prints the registered models: python -m vit_jax.models [--image_size 224] [--num_classes 1000].

One row per model: parameters, tokens, forward GFLOPs and training GFLOPs per
image (training = 3 x forward: the backward pass costs twice the forward, as
vit_jax.budget counts).
"""

import argparse

from vit_jax import budget, help_format
from vit_jax.models import registry


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
      prog='python -m vit_jax.models', description=__doc__.split('\n')[0],
      formatter_class=help_format.Formatter)
  p.add_argument('--image_size', type=int, default=224, help='input resolution')
  p.add_argument('--num_classes', type=int, default=1000,
                 help='classifier head width')
  args = p.parse_args(argv)
  print(f'{"model":<14} {"params":>13} {"tokens":>7} {"fwd GFLOPs":>11} '
        f'{"train GFLOPs":>13}')
  for name in registry.MODELS:
    spec = registry.get_spec(name)
    model = registry.get_model(name, args.num_classes)
    params = registry.count_params(registry.param_shapes(model, args.image_size))
    tokens = (args.image_size // spec.stride) ** 2 + 1
    forward = 2 * budget.forward_macs(spec, args.image_size, args.num_classes)
    train = budget.train_flops_per_image(spec, args.image_size, args.num_classes)
    print(f'{name:<14} {params:>13,} {tokens:>7} {forward / 1e9:>11.2f} '
          f'{train / 1e9:>13.2f}')


if __name__ == '__main__':
  main()
