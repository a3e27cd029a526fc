"""Export of trained zoo models as SavedModels for TF Serving and TF Hub reuse (see export/encoder.py).

`export.run(model_dir, export_base, model_name, version=None)` exports a finished training run.
"""


def __getattr__(name):
    if name == "run":
        from export import encoder

        return encoder.run
    raise AttributeError(f"module 'export' has no attribute {name!r}")
