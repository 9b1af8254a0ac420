#!/bin/sh
# Copies the pinned browser builds of the page's libraries into web/vendor/
# (committed and embedded in the binary). Run after changing package.json:
#   sh web-vendor/update.sh
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
out=../web/vendor
mkdir -p "$out"
cp node_modules/marked/marked.min.js "$out/marked.min.js"
cp node_modules/dompurify/dist/purify.min.js "$out/purify.min.js"
cp node_modules/@highlightjs/cdn-assets/highlight.min.js "$out/highlight.min.js"
cp node_modules/@highlightjs/cdn-assets/styles/github.min.css "$out/highlight-light.min.css"
cp node_modules/@highlightjs/cdn-assets/styles/github-dark.min.css "$out/highlight-dark.min.css"
for license in marked/LICENSE.md dompurify/LICENSE @highlightjs/cdn-assets/LICENSE; do
    name=$(echo "$license" | cut -d/ -f1 | tr -d @)
    cp "node_modules/$license" "$out/LICENSE-$name.txt"
done
