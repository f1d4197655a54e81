"""Draw the default portrait, ``engine/assets/portrait.png``: a held-out identity of the avatar family.

The shipped default model animates the synthetic avatar family it was trained on, so the default
portrait is one of that family that training never saw (its identity comes from a random stream
disjoint from the training split's), drawn neutral: mouth closed, eyes open, no motion. It is
drawn at the model's own 128x128, so what the model sees is exactly what the renderer made.

    python -m engine.assets.make_portrait
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from engine.training import avatar

log = logging.getLogger(__name__)

OUTPUT = Path(__file__).with_name("portrait.png")
# The random stream of held-out portraits; training identities come from other streams.
PORTRAIT_STREAM = (0, 2_000_029, 1)
SIZE = 128


def default_portrait() -> np.ndarray:
    """(128, 128, 3) uint8: the default identity, neutral."""
    identity = avatar.Identity.sample(np.random.default_rng(PORTRAIT_STREAM))
    return avatar.portrait(identity, avatar.Attributes.neutral(), SIZE)


def main() -> None:
    Image.fromarray(default_portrait()).save(OUTPUT)
    log.info("wrote %s", OUTPUT)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
