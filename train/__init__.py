"""Training: `train.run(model, model_dir, **settings)` (`model`: a registered model's name or its class), and the
command lines `python -m train --model=NAME` and `python -m train.<model>`.

`run` is imported on first use, so that the command lines can quiet TensorFlow's log before it loads.
"""


def __getattr__(name):
    if name in ("run", "TrainResult"):
        from train import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")
