"""Package metadata for `llm`: a JAX-first language-model training pipeline."""

from setuptools import find_packages, setup

setup(
    name="llm",
    version="0.1.0",
    description="The whole language-model training pipeline in one small JAX package.",
    python_requires=">=3.11",
    packages=find_packages(include=["llm", "llm.*", "configs"]),
    # The labelling page's static files and the shipped evaluation tasks, read through
    # importlib.resources.
    package_data={"llm.label.static": ["*.html", "*.js", "*.css"],
                  "llm.eval.tasks": ["*.yaml", "*.jsonl"]},
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "grain>=0.2.18",
        "sentencepiece>=0.2",
        "ml_collections>=1.1",
        "tensorboardX>=2.6",
        "absl-py>=2.0",
        "numpy>=1.26",
        "xxhash>=3.0",
        "safetensors>=0.4",
        "matplotlib>=3.8",  # the demo's curves PNG
        "pyyaml>=6",  # evaluation task files
        "jinja2>=3.1",  # models' own chat templates, rendered in its sandbox
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.6", "ruff>=0.6"],
        # The peers the tests and benchmarks compare against, never imported by the package:
        # TRL's losses (reward, DPO, KTO, GRPO), lm-evaluation-harness's HF backend,
        # datatrove's quality filters (with spaCy, its English word splitter), Playwright to
        # drive the system's Chromium for the labelling page, and peft (the real-model LoRA
        # benchmark's peer).
        "peers": ["trl==1.16.*", "lm-eval==0.4.*", "datatrove==0.10.*", "spacy==3.8.*",
                  "playwright==1.65.*", "peft==0.22.*"],
        # torch>=2.4,<2.14 is met by the CPU build 2.13.0 kept on the dev machines; a bare
        # `torch` would pull the multi-GB CUDA build.
        # gguf: transformers' GGUF reader (the real-model tests' SmolLM2 ships as a GGUF file).
        "hf": ["torch>=2.4,<2.14", "transformers>=4.45", "tokenizers>=0.20", "gguf>=0.10"],
        # lm-evaluation-harness, for `python -m llm.eval.lm_eval` (its tasks on our models).
        "eval": ["lm-eval==0.4.*"],
        "gpu": ["jax[cuda12]>=0.10.2"],
        "tpu": ["jax[tpu]>=0.10.2"],
        "wandb": ["wandb>=0.17"],
        # Parquet and .zst inputs, mojibake repair, the Ray executor, compiled MinHash
        # kernels (numba; without it dedup runs the same hashes in slower numpy), and the
        # dedup benchmark's peers (datasketch; rensa where it installs).
        "data": ["pyarrow>=15", "zstandard>=0.22", "ftfy>=6.2", "ray>=2.30", "numba>=0.60",
                 "datasketch>=1.6"],
    },
)
