"""Robustness evaluation of trained zoo models (issues 4 and 13).

`evaluate.run(model_dirs, output_dir, stages=..., common=...)` is the library entry point;
`python -m evaluate.robustness` is a thin command line over it (flags generated from the settings).
`run`, `Common`, `EvaluationError` and `STAGES` are imported on first use, so that the command line can
quiet TensorFlow's log before it loads.

- `stage_base`: what every stage shares (settings fields, `Common`, the `Context`, progress with examples/s);
- `stages`: the registry of stages, one file each: `accuracy`, `decoder`, `ae_attacks`, `margin`, `chains`.
  A stage holds its settings and runs over the test set; the computation behind three of them is in the
  `<stage>_maths` module of the same name, with no settings, data or reports;
- `pipeline`: `run` and `evaluate_model` (loads a model with `zoo.load`, runs the stages, writes the outputs);
- `interface`: the four functions the evaluation needs from a model (encode mean, posterior stddev,
  decode, prior samples), from the interface every zoo model declares;
- `worst_case`: the downstream attack ensemble (the project's PGD, ART's APGD-CE, APGD-DLR, Square), the
  worst case per example, the robustness radius and the gradient-free check;
- `probes`: linear classifiers on the frozen representation;
- `quick_check`: the quick robustness check training runs (a linear probe and PGD-10 on a fixed subset),
  at its end and, as the robustness curve, every `robustness_every` steps (`train.callbacks`);
- `frechet`, `msssim`, `margin_maths`, `tensors`: pure maths (Frechet distance, MS-SSIM for small images,
  the Camuto et al. margin bound and maximum-damage attack of the `margin` stage, per-example distances);
- `ae_attacks_maths`: the latent-space and maximum-damage attacks of the robust GMM-DAE paper, with MS-SSIM
  (the `ae_attacks` stage);
- `fid`: feature extractors for FID (InceptionV3 or a cached classifier);
- `chains_maths`: iterated encode-decode chains (AVAE paper, Figure 1; the `chains` stage);
- `report`: JSON, Markdown tables and plots, and the side-by-side comparison.
"""

_LAZY = {
    "run": "evaluate.pipeline",
    "Common": "evaluate.stage_base",
    "EvaluationError": "evaluate.stage_base",
    "STAGES": "evaluate.stages",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'evaluate' has no attribute {name!r}")
