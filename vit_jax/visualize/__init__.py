"""See inside a ViT: attention rollout, position-embedding similarity, patch filters, attention distance.

`python -m vit_jax.visualize {attention,posemb,filters,distance} ...
--checkpoint PATH --out DIR` writes `DIR/<command>.png` and the numbers
behind it as `DIR/<command>.json` (the paper's Figures 6 and 7). Modules:
loading (checkpoint -> model), capture (attention weights from the model),
rollout (rollout and attention distance), embeddings (posemb similarity,
filter PCA), plots, commands, and the CLI in __main__.
"""
