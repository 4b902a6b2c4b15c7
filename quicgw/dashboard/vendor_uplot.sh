#!/usr/bin/env bash
# Re-vendors the dashboard's charting library (uPlot, MIT) from the npm registry: the dist files
# and the licence go into quicgw/dashboard/static/vendor/, committed, so the dashboard needs no
# network at run time. Run it only to change the version: `make vendor-js`.
set -euo pipefail
VERSION=1.6.32
# sha256 of the files this version ships; a mismatch means the package is not what we checked.
JS_SHA256=19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f
CSS_SHA256=df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04

here="$(cd "$(dirname "$0")" && pwd)"
dest="$here/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$VERSION" >/dev/null && tar xzf "uplot-$VERSION.tgz")
pkg="$work/package"
echo "$JS_SHA256  $pkg/dist/uPlot.iife.min.js" | sha256sum -c --quiet
echo "$CSS_SHA256  $pkg/dist/uPlot.min.css" | sha256sum -c --quiet
mkdir -p "$dest"
cp "$pkg/dist/uPlot.iife.min.js" "$pkg/dist/uPlot.min.css" "$dest/"
cp "$pkg/LICENSE" "$dest/uPlot.LICENSE"
echo "vendored uPlot $VERSION into $dest"
