"""VAE: the evidence lower bound, eq. (2) of the AVAE paper (Cemgil et al., NeurIPS 2020).

B = <log p(x|z)>_q(z|x) - KL(q(z|x) || p(z)); BaseVAE computes exactly this,
so the VAE adds no regulariser.
"""

from zoo import base, registry


@registry.register("vae")
class VAE(base.BaseVAE):
    pass
