"""The parts of `benchmarks.train_speed`, one concern a module.

`runners` (models, settings, timed rounds), `flops`, `machine`, `matmul_peak`, `jax_reference`, `profiler`
(the profiler's breakdowns, XLA thunks by kind) and `report` (rows and Markdown).
"""

from zoo import console

console.quiet_tensorflow()  # before any of the modules loads TensorFlow
