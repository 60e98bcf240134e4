#!/usr/bin/env python3
"""Writes the BAIR-format TFRecord fixture under trainer/tests/data/bair/ with an independent
TFRecord writer (the `tfrecord` package: Google's protobuf + the `crc32c` package), so rotor's
reader is proven against records it did not write itself.

Layout as the original bair_robot_pushing_dataset_v0: softmotion30_44k/{train,test}/*.tfrecords,
one tf.Example per trajectory of 30 frames, '{i}/image_aux1/encoded' = raw HxWx3 RGB bytes,
'{i}/action' (4 floats) and '{i}/endeffector_pos' (3 floats). The frames are real: consecutive
frames of opencv's vtest.avi scaled to 16x16 (BAIR's are 64x64; small keeps the fixture small).

Run once (needs ffmpeg and `pip install tfrecord protobuf crc32c numpy`):
    python3 scripts/make-bair-fixture.py data/videos/vtest.avi trainer/tests/data/bair
"""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
from tfrecord.writer import TFRecordWriter

SIDE, FRAMES = 16, 30
video, out = sys.argv[1], sys.argv[2]
raw = subprocess.run(
    ["ffmpeg", "-v", "error", "-i", video, "-vf", f"scale={SIDE}:{SIDE}:flags=area",
     "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
frames = np.frombuffer(raw, np.uint8).reshape(-1, SIDE, SIDE, 3)
rng = np.random.default_rng(0)
start = 0
expected = {}
for split, files in (("train", [4, 3]), ("test", [2])):
    d = os.path.join(out, "softmotion30_44k", split)
    os.makedirs(d, exist_ok=True)
    first = 0
    for n in files:
        w = TFRecordWriter(os.path.join(d, f"traj_{first}_to_{first + n - 1}.tfrecords"))
        for _ in range(n):
            datum = {}
            for i in range(FRAMES):
                datum[f"{i}/image_aux1/encoded"] = (frames[start + i].tobytes(), "byte")
                datum[f"{i}/action"] = (rng.standard_normal(4).astype(np.float32).tolist(), "float")
                datum[f"{i}/endeffector_pos"] = (rng.standard_normal(3).astype(np.float32).tolist(), "float")
            w.write(datum)
            clip = b"".join(datum[f"{i}/image_aux1/encoded"][0] for i in range(FRAMES))
            expected.setdefault(split, []).append({
                "frames_sha256": hashlib.sha256(clip).hexdigest(),
                "action0": datum["0/action"][0],
            })
            start += 25  # trajectories overlap a little, as nothing requires them not to
        w.close()
        first += n
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump({"side": SIDE, "frames": FRAMES, "trajectories": expected}, f, indent=1)
print(f"wrote the BAIR fixture under {out}: {start // 25} trajectories of {FRAMES} frames {SIDE}x{SIDE}")
