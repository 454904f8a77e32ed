from setuptools import find_packages, setup

setup(
    name="hf_ifbeta",
    version="0.1.0.dev0",
    description="Prune image datasets for knowledge distillation with influence functions and a learned Beta policy.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["hf_ifbeta", "hf_ifbeta.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "transformers>=5.0,<6",
        "datasets>=3.0",
        "filelock>=3.10",
        "accelerate>=1.0",
        "timm>=1.0.15",
        "numpy>=1.24",
        "huggingface-hub>=0.30",
        "scipy>=1.10",
    ],
    extras_require={
        "plot": ["matplotlib>=3.7"],
        "testing": ["pytest>=8", "matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["hf-ifbeta-prune=hf_ifbeta.cli:prune_main"]},
)
