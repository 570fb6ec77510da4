#!/usr/bin/env python3
"""When does compressing a body between nodes pay? (issue 12, item 7)

zlib (the library CZlib links) on a model-serving-like JSON payload, at levels 1 and 6, for
body sizes from 1 KiB to 1 MiB: the compression ratio, compress and decompress speed on one
core, and the link speed below which compressing saves time (bytes saved / time spent on both
ends). Run it on the machines the cluster runs on:

    python3 benchmarks/compression.py
"""
import json
import random
import time
import zlib


def payload(size):
    random.seed(1)
    items = []
    while len(json.dumps(items)) < size:
        items.append({"id": random.randint(0, 10**6), "score": round(random.random(), 6),
                      "label": random.choice(["cat", "dog", "bird", "fish"]),
                      "embedding": [round(random.gauss(0, 1), 4) for _ in range(8)]})
    return json.dumps(items).encode()[:size]


def main():
    print("| body | level | ratio | compress MB/s | decompress MB/s | pays below (Mbit/s) |")
    print("|---|---|---|---|---|---|")
    for size in (1 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20):
        data = payload(size)
        for level in (1, 6):
            reps = max(3, (16 << 20) // size)
            times = []
            for _ in range(3):
                started = time.perf_counter()
                for _ in range(reps):
                    packed = zlib.compress(data, level)
                compress = (time.perf_counter() - started) / reps
                started = time.perf_counter()
                for _ in range(reps):
                    zlib.decompress(packed)
                decompress = (time.perf_counter() - started) / reps
                times.append((compress, decompress))
            compress, decompress = sorted(times)[1]
            saved = size - len(packed)
            print(f"| {size >> 10} KiB | {level} | {len(packed) / size:.2f} | {size / compress / 1e6:.0f} | "
                  f"{size / decompress / 1e6:.0f} | {saved / (compress + decompress) * 8 / 1e6:.0f} |")


if __name__ == "__main__":
    main()
