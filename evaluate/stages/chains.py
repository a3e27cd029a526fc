"""Encode-decode chains (AVAE paper, Figure 1): `chain.png` and the drift mean ||z_k - z_0||.

The chains and the drift are computed by `evaluate.chains_maths`.
"""

import dataclasses
import os

from evaluate import chains_maths, report
from evaluate.stage_base import Stage
from zoo.config import AT_LEAST_ONE, setting


@dataclasses.dataclass(frozen=True)
class Chains(Stage):
    name = "chains"
    results = ("chain_drift",)

    chain_steps: int = setting(10, "Encode-decode iterations of the chains.", check=AT_LEAST_ONE)
    chain_examples: int = setting(8, "Test images in the chain grid.", check=AT_LEAST_ONE)

    def run(self, context):
        model = context.model
        x = context.images[: self.chain_examples]
        chain_images, latents = chains_maths.encode_decode_chain(model.encode_mean, model.decode, x, self.chain_steps)
        per_step = chains_maths.drift(latents)
        report.plot_chain(chain_images, os.path.join(context.output_dir, "chain.png"))
        context.log(f"[chains] mean ||z_k - z_0|| after {self.chain_steps} steps: {per_step[-1]:.4f}")
        return {
            "chain_drift": {
                "steps": self.chain_steps,
                "examples": len(x),
                "per_step": per_step,
                "final": per_step[-1],
                "png": "chain.png",
            }
        }
