"""nst-jax: neural style transfer (Gatys et al. 2016) in JAX/Flax.

Public API: `stylize`, `nst_jax.weights.load_vgg19`, `nst_jax.vgg.extract_features`, and the loss functions
in `nst_jax.losses`.
"""

from nst_jax import losses, vgg
from nst_jax.errors import NstJaxError
from nst_jax.losses import content_loss, gram_matrix, style_loss, total_loss, total_variation_loss
from nst_jax.api import stylize
from nst_jax.optimize import Stylizer
from nst_jax.vgg import extract_features

__version__ = "0.1.0"

__all__ = [
    "NstJaxError", "Stylizer", "content_loss", "extract_features", "gram_matrix", "losses", "style_loss",
    "stylize", "total_loss", "total_variation_loss", "vgg", "__version__",
]
