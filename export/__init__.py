"""Export of trained zoo models as SavedModels for TF Serving and TF Hub reuse (see export/encoder.py)."""
