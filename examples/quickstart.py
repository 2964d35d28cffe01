"""Index a folder of images into the embedded store and search it by image.

    python examples/sample_photos.py samples        # if you need photos
    python examples/quickstart.py samples/photos samples/queries/cat-cropped.jpg

Uses the offline EfficientNet-Lite0 model by default (``--embedder resnet50`` for the
default ResNet50, which downloads its weights once).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lookalike import ImageSearchIndex, sources
from lookalike.registry import make_embedder
from lookalike.stores import LocalStore


def main() -> None:
    parser = argparse.ArgumentParser(description="index a folder, then search it by image")
    parser.add_argument("folder", type=Path)
    parser.add_argument("query", type=Path)
    parser.add_argument("--store", type=Path, default=Path("quickstart.lookalike"))
    parser.add_argument("--embedder", default="efficientnet-lite0")
    parser.add_argument("-k", type=int, default=5)
    args = parser.parse_args()

    with ImageSearchIndex(embedder=make_embedder(args.embedder), store=LocalStore(args.store)) as index:
        index.create_schema()
        report = index.add_many(sources.from_dir(args.folder), progress=True)
        print(report)
        for failure in report.failed:
            print(f"  could not read {failure.source}: {failure.reason}")
        print(f"most similar to {args.query}:")
        for hit in index.search(args.query, k=args.k):
            print(f"  {hit.score:.3f}  {hit.path}")


if __name__ == "__main__":
    main()
