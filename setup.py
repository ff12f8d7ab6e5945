"""Installs vit_jax. `make test` and `make run` do this for you (see README.md)."""

import setuptools

CORE = [
    # Ranges admit the CPU stack of constraints.txt (jax 0.10.2, flax 0.12.8)
    # and the GPU hosts seen with jax 0.11.x and flax 0.12.10.
    'jax>=0.10.2,<0.12',
    'flax>=0.12.8,<0.13',
    'optax>=0.2.8,<0.3',
    'orbax-checkpoint>=0.12.8,<0.13',
    'numpy>=1.26',
    'scipy>=1.11',
    'pillow>=10',
    'absl-py>=2',
]
EXTRAS = {
    # Training and evaluation: configs, metric writers, the data pipeline.
    'train': ['ml_collections>=1.1,<2', 'clu>=0.0.12', 'tensorboard>=2.21'],
    'data': ['tensorflow-cpu>=2.21,<3', 'tensorflow-datasets>=4.9.10,<5',
             'importlib_resources'],
    'eval': ['scikit-learn>=1.5', 'matplotlib>=3.8'],
    # Dataset preparation on Apache Beam (`python -m vit_jax.data.prepare
    # --beam`). Its own environment: apache-beam needs protobuf<7 and
    # pyarrow<26, below constraints.txt's pins; `make prepare-env` installs
    # constraints-prepare.txt into .venv-prepare.
    'prepare': ['apache-beam>=2.77,<3', 'tensorflow-cpu>=2.21,<3',
                'tensorflow-datasets>=4.9.10,<5', 'importlib_resources'],
    # timm (with torch and torchvision builds that match) checks our npz files
    # against another implementation; scikit-image ships sample photographs;
    # libtpu, the TPU compiler (jax[tpu]'s; Linux wheels only), compiles the
    # step for TPU slices without a TPU (vit_jax.planner.tpu).
    'test': ['pytest>=8', 'pytest-xdist>=3', 'timm>=1.0', 'torch>=2.9',
             'torchvision>=0.24', 'scikit-image>=0.24', 'transformers>=5',
             'safetensors>=0.4', 'libtpu; platform_system == "Linux"'],
    # Hugging Face interop (vit_jax.hf_interop, vit_jax.export): reading and
    # writing transformers ViT directories needs only safetensors; torch only
    # for an old pytorch_model.bin, transformers only to run the result.
    'hf': ['safetensors>=0.4'],
}
EXTRAS['all'] = sorted({p for k in ('train', 'data', 'eval') for p in EXTRAS[k]})

setuptools.setup(
    name='vit_jax',
    version='0.1.0',
    description='Vision Transformers in JAX/Flax: train, fine-tune, evaluate, '
                'and account for compute, from one CPU to a TPU pod.',
    python_requires='>=3.11',
    packages=setuptools.find_packages(include=['vit_jax', 'vit_jax.*']),
    package_data={'vit_jax': ['assets/*']},
    install_requires=CORE,
    extras_require=EXTRAS,
)
