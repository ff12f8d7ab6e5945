"""The model of the runs that test the loop, not learning: one block of width 32.

The quickstart's four blocks of width 64 take about twice as long to compile
(a 2-step `vit_jax.main` child: 18.7 -> 11.0 CPU-s with cpu_devices.py's
flags), and what these runs check (resume, preemption, processes, the cap,
the workdir) does not depend on the depth. The test that the quickstart
learns keeps the quickstart.
"""

#: Model options (config.model.update(**MODEL)).
MODEL = {'hidden_size': 32, 'num_layers': 1, 'mlp_dim': 64, 'num_heads': 2}
#: MODEL as dotted config overrides.
OVERRIDES = {f'model.{k}': v for k, v in MODEL.items()}
#: MODEL as flags of `python -m vit_jax.main`.
FLAGS = tuple(f'--config.{k}={v}' for k, v in OVERRIDES.items())
