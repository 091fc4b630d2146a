"""The memory that loading a data set adds, against its pixels: an image folder decoded, then read again
from nin's cache, as `nin train` loads it (both splits, the preprocessing fitted, the loaders made).

    .venv/bin/python benchmarks/load_memory.py                      # 60,000 + 1,000 PNG files, 3x64x64
    .venv/bin/python benchmarks/load_memory.py --train 5000 --size 32

The folder is Fashion-MNIST's images resized and recoloured (benchmarks/zoo.py), written under --root once.
Each load runs in a fresh process with an empty cache folder of its own for the first (a decode) and the
same cache for the second; what it adds is the process's peak resident memory during the load less its
resident memory before it (torch imported, nothing loaded), and, against the pixels, less what loading a
tiny folder of the same kind adds (the code's own first-use memory, whatever the data's size).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from zoo import build  # noqa: E402

from nin.hardware import describe_hardware  # noqa: E402

TINY = 100  # training images of the folder whose load measures the code's own memory

MEASURE = """
import json, sys, time
from pathlib import Path
import torch
from nin.config import from_dict
from nin.train import prepare_data

def status_bytes(key):  # /proc/self/status gives kB
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024

root, size = sys.argv[1], int(sys.argv[2])
before = status_bytes("VmRSS")
started = time.perf_counter()
config = from_dict({"dataset": "folder", "root": root, "image_size": size, "channels": 3, "model": "nin_cifar10",
                    "progress": False, "tensorboard": False})
data = prepare_data(config, torch.device("cpu"))
pixels = sum(loader.images.numel() for loader in (data.train, data.test))
print(json.dumps({"seconds": time.perf_counter() - started, "added": status_bytes("VmHWM") - before,
                  "pixels": pixels, "images": len(data.train.images) + len(data.test.images)}))
"""


def measure(root: Path, size: int, cache: str) -> dict:
    environment = {**os.environ, "NIN_CACHE_DIR": cache}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(root), str(size)], env=environment, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=60_000, help="training images (plus 1,000 to test)")
    parser.add_argument("--size", type=int, default=64, help="pixels a side")
    parser.add_argument("--root", default="runs/load-memory", help="where the folder is written (kept)")
    args = parser.parse_args()
    folder, tiny = (build(f"colour{args.size}-{count}", Path(args.root), train=count, size=args.size, colour=True)
                    for count in (args.train, TINY))
    with tempfile.TemporaryDirectory() as cache:
        base = measure(tiny, args.size, cache)
        rows = [("decoded from PNG", measure(folder, args.size, cache)),
                ("read from nin's cache", measure(folder, args.size, cache))]
    first = rows[0][1]
    print(f"\n### Loading {first['images']:,} images of 3x{args.size}x{args.size} "
          f"({first['pixels'] / 2 ** 30:.2f} GB of pixels) as nin train does\n")
    print(f"(a tiny folder of {base['images']:,} images adds {base['added'] / 2 ** 30:.2f} GB: the code's own)\n")
    print("| load | seconds | memory added | added beyond the tiny folder's / pixels beyond its |")
    print("|---|---:|---:|---:|")
    for label, row in rows:
        ratio = (row["added"] - base["added"]) / (row["pixels"] - base["pixels"])
        print(f"| {label} | {row['seconds']:.0f} | {row['added'] / 2 ** 30:.2f} GB | {ratio:.2f}x |")
    print(f"\nhardware: {describe_hardware('cpu')}", flush=True)


if __name__ == "__main__":
    main()
