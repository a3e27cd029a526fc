"""Small exact models of the AVAE paper's appendices, for checking its maths (not registered image models).

- `zoo.toy.discrete`: the discrete 1-D VAE of section 3.1 / appendix D as probability tables, with exact
  objectives (`python -m benchmarks.discrete_avae` fits it).
- `zoo.toy.ppca`: probabilistic PCA's encode-decode transition kernels of appendix B
  (`python -m benchmarks.ppca_chains` checks and iterates them).
"""
