#!/usr/bin/env bash
# Install the Debian data packages that tests and benchmarks read (nothing is downloaded at run time):
#   fortunes               topic files of short texts (/usr/share/games/fortunes): the transformers tasks
#   dataset-fashion-mnist  Fashion-MNIST (/usr/share/datasets/fashion-mnist): the fashion benchmark
# Does nothing where they are installed; where apt-get is missing or we are not root it says so and
# exits 0 (the tests that need the data then skip, naming the package).
set -euo pipefail
packages=(fortunes dataset-fashion-mnist)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
  echo "install-data.sh: cannot install ${missing[*]} (needs apt-get as root); the tests that need them will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
