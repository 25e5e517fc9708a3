"""Family ``photos``: random square crops of the photos bundled with scikit-image, scikit-learn and
matplotlib, mirrored at random and with mild brightness/contrast jitter; captioned with what the
photo shows and how much of it the crop covers.

Crops of one photo overlap between seeds (a photo has no disjoint "pools"); only the procedural,
digit, face and texture families keep seed 0 fully unseen.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance

from data.catalog import sources
from data.catalog.base import Context, register
from data.catalog.draw import choice

# name -> (package folder, file, what the photo shows)
PHOTOS = {
    "astronaut": ("skimage", "astronaut.png", "an astronaut in an orange spacesuit in front of a flag"),
    "cat": ("skimage", "chelsea.png", "the face of a tabby cat"),
    "coffee": ("skimage", "coffee.png", "a cup of coffee on a red saucer on a wooden table"),
    "rocket": ("skimage", "rocket.jpg", "a rocket on its launch pad at dusk"),
    "motorcycle": ("skimage", "motorcycle_left.png", "a red motorcycle parked in a garage"),
    "space": ("skimage", "hubble_deep_field.jpg", "distant galaxies in the Hubble deep field"),
    "portrait": ("matplotlib", "grace_hopper.jpg", "Grace Hopper in a navy uniform"),
    "temple": ("sklearn_images", "china.jpg", "a Chinese temple on a wooded hill by a lake"),
    "flower": ("sklearn_images", "flower.jpg", "an orange dahlia flower on a dark green background"),
    # grayscale sources, used by photos_bw only
    "cameraman": ("skimage", "camera.png", "a cameraman with a tripod on a lawn"),
    "coins": ("skimage", "coins.png", "old coins on a dark background"),
}
_COLOR_PHOTOS = ["astronaut", "cat", "coffee", "rocket", "motorcycle", "space", "portrait", "temple", "flower"]


def _crop(ctx: Context, name: str) -> tuple[Image.Image, str]:
    """A jittered random crop of photo ``name`` and the caption's opening words for its scale."""
    rng = ctx.rng
    folder, filename, _ = PHOTOS[name]
    img, frac = sources.random_crop(sources.photo(folder, filename), rng, ctx.size, (0.3, 1.0))
    if rng.integers(2):
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.9, 1.1)))
    img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.9, 1.1)))
    view = "a photo of" if frac > 0.75 else "a cropped photo of" if frac > 0.5 else "a close-up detail from a photo of"
    return img, view


def _single(ctx: Context, name: str):
    img, view = _crop(ctx, name)
    return img, f"{view} {PHOTOS[name][2]}"


def _photo_dataset(name: str, description: str):
    register(f"photos_{name}", "photos", description)(lambda ctx: _single(ctx, name))


for _name in _COLOR_PHOTOS:
    _photo_dataset(_name, f"random crops of one photo: {PHOTOS[_name][2]}")


@register("photos_mixed", "photos", "random crops of nine colour photos, the subject named in the caption")
def mixed(ctx: Context):
    return _single(ctx, choice(ctx.rng, _COLOR_PHOTOS))


@register("photos_bw", "photos", "black-and-white crops of eleven photos, the subject named in the caption")
def black_and_white(ctx: Context):
    name = choice(ctx.rng, list(PHOTOS))
    img, view = _crop(ctx, name)
    gray = np.asarray(img.convert("L"))
    view = view.replace("photo", "black and white photo")
    return Image.fromarray(np.stack([gray] * 3, -1)), f"{view} {PHOTOS[name][2]}"
