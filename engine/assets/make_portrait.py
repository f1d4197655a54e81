"""Draw the default portrait, ``engine/assets/portrait.png``, so the repo ships no third-party face.

A friendly cartoon head and shoulders, front-facing with a closed mouth: the neutral pose a
talking-head model animates from. Drawn at twice the output size and downsampled, because
ImageDraw does not antialias. No randomness, so reruns give the same picture.

    python -m engine.assets.make_portrait
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

SIZE = 512
SCALE = 2  # supersampling factor for antialiasing
OUTPUT = Path(__file__).with_name("portrait.png")

BACKGROUND_TOP = (214, 230, 242)
BACKGROUND_BOTTOM = (236, 226, 240)
SKIN = (244, 200, 166)
SKIN_SHADOW = (222, 172, 138)
HAIR = (92, 58, 38)
HAIR_SHINE = (126, 84, 56)
SHIRT = (70, 130, 180)
SHIRT_SHADOW = (52, 104, 150)
IRIS = (84, 120, 70)
LINE = (60, 38, 28)
LIPS = (196, 102, 104)
LIPS_DARK = (150, 66, 72)
BLUSH = (240, 140, 140, 70)


def _box(cx: float, cy: float, rx: float, ry: float) -> tuple[float, float, float, float]:
    """An ellipse's bounding box from its centre and radii, in canvas pixels."""
    return (cx - rx, cy - ry, cx + rx, cy + ry)


def draw_portrait(size: int = SIZE) -> Image.Image:
    """Return the portrait as an RGB image of ``size`` x ``size``.

    Coordinates are written for a 1024 canvas (512 output at 2x) and scaled, so the layout does
    not depend on ``size``.
    """
    canvas = size * SCALE
    k = canvas / 1024

    def s(*values: float) -> tuple[float, ...]:
        return tuple(v * k for v in values)

    img = Image.new("RGB", (canvas, canvas))
    draw = ImageDraw.Draw(img)

    # 1. Background: a soft vertical gradient, so the silhouette stands out without a hard edge.
    for y in range(canvas):
        t = y / (canvas - 1)
        colour = tuple(round(a + (b - a) * t) for a, b in zip(BACKGROUND_TOP, BACKGROUND_BOTTOM, strict=True))
        draw.line([(0, y), (canvas, y)], fill=colour)

    # 2. Hair behind the head: gives volume beyond the face outline, like a bob.
    draw.ellipse(s(*_box(512, 440, 246, 286)), fill=HAIR)

    # 3. Shoulders and shirt, then the neck over them and a V collar showing skin.
    draw.rounded_rectangle(s(150, 830, 874, 1250), radius=220 * k, fill=SHIRT)
    draw.rectangle(s(446, 660, 578, 870), fill=SKIN)
    draw.polygon(s(420, 830, 604, 830, 512, 930), fill=SKIN)
    draw.line(s(416, 826, 512, 930, 608, 826), fill=SHIRT_SHADOW, width=round(14 * k), joint="curve")
    # Shadow the chin casts on the neck, so the head does not look pasted on.
    draw.ellipse(s(*_box(512, 715, 90, 50)), fill=SKIN_SHADOW)

    # 4. Ears, then the face oval over them.
    for cx in (300, 724):
        draw.ellipse(s(*_box(cx, 500, 36, 58)), fill=SKIN)
        draw.ellipse(s(*_box(cx, 500, 16, 32)), fill=SKIN_SHADOW)
    draw.ellipse(s(*_box(512, 470, 212, 262)), fill=SKIN)

    # 5. Fringe: a cap over the forehead, a side-swept lock, and a highlight.
    draw.chord(s(*_box(512, 370, 232, 200)), 180, 360, fill=HAIR)
    draw.pieslice(s(*_box(440, 370, 150, 36)), 0, 180, fill=HAIR)
    draw.arc(s(*_box(512, 380, 196, 180)), 215, 250, fill=HAIR_SHINE, width=round(14 * k))

    # 6. Cheeks: translucent blush composited as a layer, since ImageDraw fills are opaque.
    blush = Image.new("RGBA", img.size, (0, 0, 0, 0))
    blush_draw = ImageDraw.Draw(blush)
    for cx in (394, 630):
        blush_draw.ellipse(s(*_box(cx, 585, 46, 28)), fill=BLUSH)
    img = Image.alpha_composite(img.convert("RGBA"), blush).convert("RGB")
    draw = ImageDraw.Draw(img)

    # 7. Eyes: white, iris, pupil and a catch-light, with an upper lid line.
    for cx in (424, 600):
        draw.ellipse(s(*_box(cx, 495, 42, 30)), fill=(255, 255, 255), outline=LINE, width=round(4 * k))
        draw.ellipse(s(*_box(cx, 497, 22, 22)), fill=IRIS)
        draw.ellipse(s(*_box(cx, 497, 11, 11)), fill=(20, 20, 24))
        draw.ellipse(s(*_box(cx + 7, 490, 5, 5)), fill=(255, 255, 255))
        draw.arc(s(*_box(cx, 497, 46, 34)), 200, 340, fill=LINE, width=round(7 * k))

    # 8. Eyebrows: thick arcs, slightly raised for an open expression.
    for cx in (420, 604):
        draw.arc(s(*_box(cx, 462, 58, 30)), 205, 335, fill=HAIR, width=round(13 * k))

    # 9. Nose: a soft shadow curve, not an outline.
    draw.arc(s(*_box(512, 572, 24, 16)), 20, 160, fill=SKIN_SHADOW, width=round(8 * k))

    # 10. Closed mouth: lips with a dark line between, the rest pose for lip-sync.
    draw.chord(s(*_box(512, 645, 54, 15)), 180, 360, fill=LIPS)
    draw.chord(s(*_box(512, 645, 50, 20)), 0, 180, fill=LIPS)
    draw.line(s(460, 645, 564, 645), fill=LIPS_DARK, width=round(6 * k))

    return img.resize((size, size), Image.Resampling.LANCZOS)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    draw_portrait().save(OUTPUT, optimize=True)
    logger.info("wrote %s", OUTPUT)


if __name__ == "__main__":
    main()
