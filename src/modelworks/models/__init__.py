"""Model architectures, one file each; each registers itself in `registry.py` on import.

Adding an architecture: a file here with its config dataclass and `@register("name", Config)`,
and one line below.
"""

from modelworks.models import (  # noqa: F401  (each registers itself)
    behaviour,
    cnn,
    detector,
    encoder,
    gpt,
    gpt_classifier,
    mlp,
    registry,
    sasrec,
    unet,
    vit,
)
