"""Robustness evaluation of trained zoo models (issue 4).

Entry point: `python -m evaluate.robustness` (the only module that reads
flags). Everything else is library code with explicit arguments:

- `interface`: the three functions the evaluation needs from a model
  (encode mean, posterior stddev, decode) and an adapter for zoo models;
- `frechet`, `msssim`, `margin`: pure maths (Frechet distance, MS-SSIM for
  small images, the Camuto et al. margin bound);
- `probes`: linear classifiers on the frozen representation and their
  adversarial accuracy under the project's PGD (`zoo.attacks`);
- `ae_attacks`: the latent-space and maximum-damage attacks of the robust
  GMM-DAE paper, with MS-SSIM;
- `fid`: feature extractors for FID (InceptionV3 or a cached classifier);
- `chains`: iterated encode-decode chains (AVAE paper, Figure 1);
- `report`: JSON, Markdown tables and plots, and the side-by-side comparison;
- `pipeline`: runs all of the above for one model.
"""
