"""Write a small folder of public-domain sample photos (shipped inside scikit-image) and a few
edited copies to use as queries.

    python examples/sample_photos.py samples/

creates ``samples/photos/*.png|jpg`` (the gallery) and ``samples/queries/*.jpg`` (cropped,
mirrored or recoloured versions of some gallery photos, so each has a known right answer).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

# Colour photographs and pictures shipped in scikit-image's wheel (no download needed).
PHOTOS = [
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "horse.png", "camera.png", "coins.png",
    "moon.png", "brick.png", "grass.png", "gravel.png", "page.png", "text.png", "cell.png",
    "color.png", "logo.png",
]


def skimage_data_dir() -> Path:
    try:
        import skimage
    except ImportError as exc:  # pragma: no cover - guidance for users
        raise SystemExit("this example needs scikit-image: pip install scikit-image") from exc
    return Path(os.path.dirname(skimage.__file__)) / "data"


def calibration_images(min_side: int = 256) -> list[Image.Image]:
    """The colour photos here of at least ``min_side`` pixels, each whole, mirrored and as
    two crops: calibration images for ``OnnxEmbedder(quantize="int8")`` that share nothing
    with an evaluation set (44 images with scikit-image 0.25)."""
    images = []
    for path in sorted(skimage_data_dir().glob("*.[jp][pn]g")):
        with Image.open(path) as opened:
            if opened.mode != "RGB" or min(opened.size) < min_side:
                continue
            im = opened.convert("RGB")
        w, h = im.size
        images += [im, ImageOps.mirror(im), im.crop((0, 0, w * 2 // 3, h * 2 // 3)),
                   im.crop((w // 3, h // 3, w, h))]
    return images


def write_samples(out: Path) -> tuple[Path, Path]:
    source = skimage_data_dir()
    photos, queries = out / "photos", out / "queries"
    photos.mkdir(parents=True, exist_ok=True)
    queries.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        if (source / name).exists():
            shutil.copyfile(source / name, photos / name)
    edits = {
        "chelsea.png": ("cat-cropped.jpg", lambda im: im.crop((40, 20, im.width - 30, im.height - 10))),
        "coffee.png": ("coffee-mirrored.jpg", ImageOps.mirror),
        "rocket.jpg": ("rocket-darker.jpg", lambda im: ImageEnhance.Brightness(im).enhance(0.7)),
        "astronaut.png": ("astronaut-small.jpg", lambda im: im.resize((im.width // 3, im.height // 3))),
    }
    for name, (query_name, edit) in edits.items():
        if (photos / name).exists():
            with Image.open(photos / name) as im:
                edit(im.convert("RGB")).save(queries / query_name, quality=90)
    return photos, queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write photos/ and queries/ into")
    args = parser.parse_args()
    photos, queries = write_samples(args.out)
    print(f"{len(list(photos.iterdir()))} photos in {photos}, {len(list(queries.iterdir()))} queries in {queries}")


if __name__ == "__main__":
    main()
