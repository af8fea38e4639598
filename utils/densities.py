"""Log-densities of the model's distributions (torch, differentiable): the
logistic latents and the discretized-logistic 8-bit pixels.  The model
trains with them and the bits-back coders evaluate the -ELBO with them; the
quantized versions the entropy coder uses are in utils/distributions.py.

Pixels are 8-bit values scaled into [-1, 1] by (x - 127.5) / 127.5, so a pixel
bin has width 2/255; the two edge bins absorb the tails (PixelCNN++ style).
"""
import math

import torch
import torch.nn.functional as F


def logistic_logp(x, mu, scale):
    """Log-density of Logistic(mu, scale) at x (elementwise)."""
    y = (x - mu) / scale
    return -y - torch.log(scale) - 2.0 * F.softplus(-y)


def discretized_logistic_logp(x, mu, scale):
    """Log-probability of 8-bit pixels ``x`` (values 0..255) under a
    logistic over 256 bins of width 2/255 in [-1, 1], edge bins open."""
    x = (x - 127.5) / 127.5
    centered = x - mu
    inv = 1.0 / scale
    plus_in = inv * (centered + 1.0 / 255.0)
    min_in = inv * (centered - 1.0 / 255.0)
    log_cdf_plus = plus_in - F.softplus(plus_in)      # log F(upper), for bin 0
    log_one_minus_cdf_min = -F.softplus(min_in)       # log(1 - F(lower)), bin 255
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    mid_in = inv * centered
    log_pdf_mid = mid_in - torch.log(scale) - 2.0 * F.softplus(mid_in)
    # Where the bin mass underflows in float32, fall back to density * width.
    log_prob_mid = torch.where(cdf_delta > 1e-5,
                               torch.log(torch.clamp(cdf_delta, min=1e-10)),
                               log_pdf_mid - math.log(127.5))
    return torch.where(x < -0.999, log_cdf_plus,
                       torch.where(x > 0.999, log_one_minus_cdf_min, log_prob_mid))
