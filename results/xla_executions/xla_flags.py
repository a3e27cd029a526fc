"""Steps/s of the mlp VAE and AVAE as `train` runs them (XLA, 10 steps per execution, programs of 5 steps)
under whatever XLA_FLAGS the process was started with: XLA reads its flags once, so each variant is its own
process (xla_flags.sh alternates them).

Run from the repository root: XLA_FLAGS=... python results/xla_executions/xla_flags.py vae,avae 200
"""

import os
import sys
import time

sys.path.insert(0, os.getcwd())

from zoo import console  # noqa: E402

console.quiet_tensorflow()

import numpy as np  # noqa: E402
import xla_runs  # noqa: E402

data = xla_runs.training_data("../shared/tfds")
runs = {}
for name in sys.argv[1].split(","):
    model = xla_runs.mlp_model(name)
    model.steps_per_xla_program = 5
    started = time.time()
    model.fit(data, steps_per_epoch=20, epochs=1, verbose=0)
    print(name, "compile + 20 steps", round(time.time() - started, 1), "s", flush=True)
    runs[name] = (model, data)
times = xla_runs.time_alternated(runs, 3, int(sys.argv[2]))
rates = {key: round(1 / np.percentile(value, 10), 1) for key, value in times.items()}
print(f"XLA_FLAGS='{os.environ.get('XLA_FLAGS', '')}' steps/s {rates} load {os.getloadavg()[0]:.2f}", flush=True)
