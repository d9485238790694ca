#!/bin/bash
# usage: PFX=/tmp/x rows-parse.sh > rows.txt   (parses $PFX.<fmt>.<level>.cg from rows.sh)
for cfg in "ept-ad 0" "ept-ad 1" "arm64-4k 0" "arm64-4k 1"; do
  set -- $cfg
  f=$PFX.$1.$2.cg
  callgrind_annotate --inclusive=yes --threshold=100 $f 2>/dev/null | grep -E "examples/rows.rs:rows::row_[a-z_]+ \[" | sed -E 's/^ *([0-9,]+).*rows::(row_[a-z_]+).*/\2 \1/' | tr -d , | sed "s/^/$1 $2 /"
done
