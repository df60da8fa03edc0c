"""A folder of PNG images to train on, made without downloads: scikit-learn's 1,797 bundled 8x8 digits, each
upsampled to ``--size`` pixels (bicubic) and saved as an 8-bit grayscale PNG, ``OUT/<label>/<index>.png``.

    python examples/make_png_folder.py --out data/digits16 --size 16
    ppl-diffusion train --data image_folder --data-root data/digits16 --run-dir runs/own ...

Any folder of same-sized PNGs trains the same way (``ppl_diffusion.data.load_image_folder``; subfolders are
searched, and the test split is a seeded 10% of the images).
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to write the PNGs to (created)")
    p.add_argument("--size", type=int, default=16, help="image side in pixels (default 16)")
    args = p.parse_args(argv)
    if args.size < 1:
        p.error(f"--size {args.size}: pass a side of at least 1 pixel, e.g. 16")
    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # [N x 8 x 8], values 0..16 -> 0..255
    out = Path(args.out)
    for i, (image, label) in enumerate(zip(pixels, digits.target)):
        (out / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((args.size, args.size), Image.BICUBIC).save(out / str(label) / f"{i:04d}.png")
    print(f"wrote {len(pixels)} grayscale PNGs of {args.size}x{args.size} to {out}/<label>/")
    return out


if __name__ == "__main__":
    main()
