"""Install avflow: `pip install -e .` (the main job), `pip install -e .[dev,torch]` (tests and PyTorch interop).

Pinned sets of the same packages: requirements.txt (CORE) and requirements-dev.txt (CORE and both extras).
"""
from setuptools import find_packages, setup

CORE = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "grain>=0.2.18",
    "tensorflow-datasets>=4.9.10",
    "librosa>=0.11.0",
    "ml-collections>=1.1.0",
    "absl-py>=2.5.1",
    "soundfile>=0.14.0",
    "pyloudnorm>=0.2.0",
    "mir_eval>=0.8.2",
    "diffrax>=0.7.2",
    "safetensors>=0.8.0",
    "scipy>=1.17",
    "numpy>=2.0",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "av>=14.0",
    "matplotlib>=3.9",
    "pillow>=10",
]

setup(
    name="avflow",
    version="0.1.0",
    description="Audio-visual conditional flow matching in JAX/Flax: VisAH-FM and relatives.",
    # `configs/` stays at the top of the tree and installs as the `avflow_configs` package, so an installed avflow
    # still resolves `--config=configs/visah_fm.py:<variant>` (`avflow.configs_lib.resolve_config_file`).
    packages=find_packages(include=["avflow", "avflow.*"]) + ["avflow_configs"],
    package_dir={"avflow_configs": "configs"},
    python_requires=">=3.11",
    install_requires=CORE,
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.6"],
        # Tests, PyTorch interop (import, export) and prepare's PyTorch inputs only: not in the main job's install.
        "torch": ["torch==2.13.0", "transformers>=4.50"],
    },
    entry_points={"console_scripts": ["avflow=avflow.__main__:run"]},
)
