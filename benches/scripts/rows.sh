#!/bin/bash
# Instruction counts of every explicit-API row (benches/examples/rows.rs) under callgrind.
# usage: rows.sh BIN OUTPREFIX, then PFX=OUTPREFIX rows-parse.sh > rows.txt and
# python3 rows-cmp.py before.txt after.txt (a markdown table). The example uses only API that
# predates issue 17, so it can be copied into an old checkout to get the "before" side.
BIN=$1; OUT=$2
for cfg in "ept-ad 0" "ept-ad 1" "arm64-4k 0" "arm64-4k 1"; do
  set -- $cfg
  f=$OUT.$1.$2.cg
  valgrind --tool=callgrind --callgrind-out-file=$f $BIN $1 $2 >/dev/null 2>&1
done
