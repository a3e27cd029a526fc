"""A TensorFlow-Serving-compatible model server, in Python.

`python -m serving.server` speaks TensorFlow Serving's REST API (status,
metadata, predict in row and columnar formats) and its gRPC
`PredictionService` / `ModelService`, loads SavedModels from
`<model_base_path>/<integer version>/`, hot-swaps new versions and batches
concurrent requests. `serving.client` is a small client for embeddings.
"""
