from setuptools import find_packages, setup

# Lower bounds are the versions the test suite runs against; no upper pins (see README "Compatibility").
INSTALL_REQUIRES = [
    "torch>=2.6",
    "transformers>=5.24",
    "trl>=1.16",
    "peft>=0.21",
    "datasets>=5.2",
    "accelerate>=1.15",
    "evaluate>=0.4.6",
    "huggingface-hub>=1.0",
    "openai>=1.40",
    "pyyaml>=6.0",
    "tqdm>=4.66",
    "numpy>=1.26",
    "matplotlib>=3.8",
]

EXTRAS = {
    # flash-attn compiles against the installed torch: `pip install flash-attn --no-build-isolation`.
    "flash-attn": ["flash-attn>=2.6"],
    # Ulysses sequence parallelism (`sp_size`) needs DeepSpeed >= 0.18.2 through accelerate; tested with 0.19.8.
    "deepspeed": ["deepspeed>=0.19.8"],
    # The test suite runs the sequence-parallel tests on the real DeepSpeed engine (gloo on CPU), and converts
    # SmolLM2-135M-Instruct's GGUF file (`longalign model fetch`) for the tests on real weights, and builds the user
    # guide in strict mode (MkDocs, Material, mkdocstrings; tests/test_docs.py).
    "dev": [
        "pytest>=8.0",
        "ruff>=0.6",
        "deepspeed>=0.19.8",
        "gguf>=0.19",
        "mkdocs>=1.6.1",
        "mkdocs-material>=9.8.2",
        "mkdocstrings-python>=2.0.11",
    ],
}

setup(
    name="longalign-hf",
    version="0.1.0",
    description="LongAlign long-context alignment (packing, loss weighting, LongBench-Chat) for TRL and Accelerate",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["longalign_hf", "longalign_hf.*"]),
    package_data={"longalign_hf": ["metrics/*/*.md", "metrics/*/*.py"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["longalign=longalign_hf.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
