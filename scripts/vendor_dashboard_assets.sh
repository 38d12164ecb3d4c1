#!/usr/bin/env bash
# Vendor the dashboard's chart libraries (Vega, Vega-Lite, vega-embed) from the npm registry into
# cohort/dashboard/static/vendor/, with their licenses. The page loads them from there: no CDN at
# run time. The files are committed; rerun this only to change versions (then update the README there).
set -euo pipefail
cd "$(dirname "$0")/.."

VEGA=6.4.0
VEGA_LITE=6.5.0
VEGA_EMBED=7.3.0
DEST=cohort/dashboard/static/vendor

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
( cd "$work" && npm pack --silent "vega@$VEGA" "vega-lite@$VEGA_LITE" "vega-embed@$VEGA_EMBED" >/dev/null )
mkdir -p "$DEST"
for spec in "vega:$VEGA:vega.min.js" "vega-lite:$VEGA_LITE:vega-lite.min.js" "vega-embed:$VEGA_EMBED:vega-embed.min.js"; do
  IFS=: read -r name version file <<<"$spec"
  mkdir -p "$work/$name"
  tar -xzf "$work/$name-$version.tgz" -C "$work/$name"
  cp "$work/$name/package/build/$file" "$DEST/$file"
  cp "$work/$name/package/LICENSE" "$DEST/LICENSE.$name"
done
cat > "$DEST/README.md" <<MD
# Vendored chart libraries

Copied unchanged from the npm registry by \`scripts/vendor_dashboard_assets.sh\`:

| file | package | license |
|---|---|---|
| vega.min.js | vega@$VEGA | BSD-3-Clause, LICENSE.vega |
| vega-lite.min.js | vega-lite@$VEGA_LITE | BSD-3-Clause, LICENSE.vega-lite |
| vega-embed.min.js | vega-embed@$VEGA_EMBED | BSD-3-Clause, LICENSE.vega-embed |
MD
ls -l "$DEST"
