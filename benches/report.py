#!/usr/bin/env python3
"""Regenerates BENCHMARKS.md and benchmarks.csv from one criterion run of tdp-benches.

Reads, under the criterion output directory (default: <repo>/target/criterion):
  - <group>/<bench>/new/estimates.json and benchmark.json, written by criterion: the median
    `point_estimate`, in ns per iteration;
  - tdp-meta/<group>.json and tdp-meta/machine.json, written by benches/benches/explicit.rs: what
    each group measured (subject, leaf size, number of leaves, its floor group, memory) and the
    machine;
  - tdp-meta/shared_*.json and tdp-meta/run-shared.json, written by benches/benches/shared.rs: its
    groups (per-page map in exclusive and shared mode, one and two threads) and its run.
Every time is divided by the number of leaves of its group ("ns per page": per leaf of the
group's size). Results older than the run record of their bench file (machine.json for
explicit.rs, run-shared.json for shared.rs) are ignored as stale.

Python 3 standard library only.
  python3 benches/report.py [--criterion DIR] [--md FILE] [--csv FILE] [--duration TEXT]
  python3 benches/report.py --shared-only     # print the shared-mode section, write nothing
"""

import argparse
import csv
import datetime
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMAND = ("cargo bench -p tdp-benches --bench explicit --bench shared && "
           "python3 benches/report.py")

# The operations, in table order, with the floor each is compared with.
OPS = [
    ("map_range", "map, one range call", "store"),
    ("map_pages", "map, one call per page", "store"),
    ("query", "query every page", "load"),
    ("walk", "walk every leaf, one call", "load"),
    ("protect", "write-protect the range", None),  # per group: and_not or atomic_and_not
    ("unmap_range", "unmap, one range call", "zero"),
    ("unmap_pages", "unmap, one call per page", "zero"),
    ("split", "split 1 GiB into pages", "store"),
    ("collapse", "collapse pages back", "load"),
    ("teardown", "teardown (drop)", "zero"),
]
OP_TITLE = {op: title for op, title, _ in OPS}
FLOOR_TITLE = {
    "store": "plain store",
    "load": "plain load",
    "and_not": "plain and-not",
    "atomic_and_not": "atomic and-not",
    "zero": "zero the tree's bytes",
}

CONFIGS = [
    ("ept-ad", "Intel EPT, 4 levels, accessed/dirty flags on, MAXPHYADDR 46"),
    ("ept-noad", "Intel EPT, 4 levels, accessed/dirty flags off"),
    ("npt", "AMD NPT, 4 levels, NX, 1 GiB pages"),
    ("arm64-4k", "Arm stage 2, 4 KiB granule, 40-bit IPA (3 levels, 2 concatenated root tables), "
                 "48-bit PA, FWB, hardware Access flag and dirty state"),
    ("arm64-16k", "Arm stage 2, 16 KiB granule, otherwise as arm64-4k"),
    ("arm64-64k", "Arm stage 2, 64 KiB granule, otherwise as arm64-4k"),
    ("rv-sv48x4", "RISC-V G-stage Sv48x4 (16 KiB root), Svadu, Svpbmt, no Svvptc"),
    ("loongarch-16k", "LoongArch, Linux's 16 KiB pages, 3 levels, software refill"),
    ("mips-16k", "MIPS VZ, little-endian, 16 KiB pages, 3 levels, RIXI (no huge leaves in this layout)"),
    ("ppc-4k", "Power radix partition-scoped, 4 KiB pages (13/9/9/9, 64 KiB root), big-endian entries"),
    ("ppc-64k", "Power radix, 64 KiB pages (13/9/9/5, 256-byte leaf tables)"),
]

PEER_OPS = [
    ("map, one range call", "`cursor().map_region(.., allow_huge)`", "`map_range` (NO_BLOCK_MAPPINGS for 4 KiB)",
     "`map(MapConfig { allow_huge, .. })`", "—"),
    ("map, one call per page", "`cursor.map`", "`map_range` of one page", "`map_page`", "`map_to(..).ignore()`"),
    ("query every page", "`query`", "`walk_range` over the page (no point lookup)", "`query`", "`translate_addr`"),
    ("walk every leaf, one call", "`walk` of the whole table (no range; the table holds only the range)",
     "`walk_range`", "`walk` (an iterator; final mappings counted)", "—"),
    ("write-protect the range", "`cursor().protect_region`", "`modify_range` clearing S2AP's write bit",
     "`protect_region`", "`update_flags` per page"),
    ("unmap, one range call", "`cursor().unmap_region` (tables kept until drop)",
     "`map_range` without VALID (frees covered subtables)", "`unmap` (frees empty tables)", "—"),
    ("unmap, one call per page", "`cursor.unmap`", "`map_range` without VALID, per page",
     "`unmap_page` (rescans the table)", "`unmap` per page, then `clean_up`"),
    ("split 1 GiB into pages", "—", "`map_range` with NO_BLOCK_MAPPINGS and SWFLAG_0 added (rebuilds the block as pages)",
     "`split_huge_page` per huge leaf, 1G then 2M", "—"),
    ("collapse pages back", "—", "—", "—", "—"),
    ("teardown (drop)", "drop", "drop", "drop", "— (the owner frees the tables itself)"),
]

PEER_TARGET = 0.5  # at least 2x faster than the fastest peer
FLOOR_TARGET = 2.0  # within 2x of the floor
MEMORY_TARGET = 1.1  # table memory within 1.1x of the minimum
METADATA_TARGET = 16  # bytes per table page
SHARED_1T_TARGET = 1.2  # shared mode on one thread at most 1.2x the time of exclusive mode
SHARED_2T_TARGET = 1.7  # two threads at least 1.7x the throughput of one

# The benches of a shared_<arch>_<leaf> group (benches/benches/shared.rs), in table order.
SHARED_BENCHES = [
    ("table_map_pages", "`Table::map_with` per page (reference)"),
    ("excl_map_pages", "`tree.exclusive().map` per page"),
    ("shared_map_pages_1t", "`tree.shared(&guard).map` per page, 1 thread"),
    ("shared_map_pages_2t", "`tree.shared(&guard).map` per page, 2 threads, disjoint halves"),
]


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_meta(crit):
    """Groups, the machine record and its time, and the other bench files' run records:
    {run name: (record, time)}."""
    meta_dir = os.path.join(crit, "tdp-meta")
    if not os.path.isdir(meta_dir):
        sys.exit(f"no {meta_dir}: run `cargo bench -p tdp-benches --bench explicit "
                 "--bench shared` first")
    groups, machine, machine_mtime, runs = {}, None, 0.0, {}
    for name in sorted(os.listdir(meta_dir)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(meta_dir, name)
        rec = load_json(path)
        if rec.get("kind") == "machine":
            machine, machine_mtime = rec, os.path.getmtime(path)
        elif rec.get("kind") == "run":
            runs[rec["run"]] = (rec, os.path.getmtime(path))
        else:
            groups[rec["group"]] = rec
    return groups, machine, machine_mtime, runs


def read_estimates(crit, not_before):
    """(group, bench) -> median ns per iteration, from this run only: `not_before(group)` is the
    time of the run record the group's results must not be older than."""
    out, stale = {}, []
    for dirpath, _dirs, files in os.walk(crit):
        if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
            continue
        bench = load_json(os.path.join(dirpath, "benchmark.json"))
        est_path = os.path.join(dirpath, "estimates.json")
        key = (bench["group_id"], bench["function_id"] or bench.get("value_str"))
        if os.path.getmtime(est_path) + 1 < not_before(key[0]):
            stale.append("/".join(key))
            continue
        out[key] = load_json(est_path)["median"]["point_estimate"]
    return out, stale


def not_before_fn(groups, machine_mtime, runs):
    """The staleness threshold of each group: its bench file's run record."""
    shared_mtime = runs.get("shared", (None, 0.0))[1]

    def not_before(group):
        g = groups.get(group)
        if g is not None and g.get("kind") == "shared":
            return shared_mtime
        return machine_mtime
    return not_before


def fmt_ns(x):
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def fmt_ratio(x):
    if x is None:
        return "—"
    return f"{x:.2f}×" if x < 10 else f"{x:.0f}×"


def verdict(ratio, target):
    """'met' or 'missed', with the gap: how many times too slow (or too big)."""
    if ratio is None:
        return "n/a"
    if ratio <= target:
        return "met"
    return f"missed ({ratio / target:.1f}× over)"


def size_bytes(n):
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"


def build_rows(groups, est):
    """One row per (group, op) measured."""
    rows = []
    peers_by_leaf = {}
    for g in groups.values():
        if g["kind"] == "peer":
            peers_by_leaf.setdefault(g["leaf"], []).append(g)
    for g in sorted(groups.values(), key=lambda g: (g["kind"] != "tdp", g.get("order", 0), g["group"])):
        if g["kind"] not in ("tdp", "peer"):
            continue
        leaves = g["leaves"]
        floor = groups.get(g["floor"])
        for op, _title, floor_kind in OPS:
            ns_iter = est.get((g["group"], op))
            if ns_iter is None:
                continue
            if floor_kind is None:
                floor_kind = g.get("protect_floor", "and_not")
            floor_ns = est.get((g["floor"], floor_kind)) if floor else None
            fastest, fastest_name = None, None
            for p in peers_by_leaf.get(g["leaf"], []):
                v = est.get((p["group"], op))
                if v is not None and (fastest is None or v < fastest):
                    fastest, fastest_name = v, p["subject"]
            per_page = ns_iter / leaves
            floor_pp = floor_ns / leaves if floor_ns is not None else None
            peer_pp = fastest / leaves if fastest is not None else None
            r_floor = per_page / floor_pp if floor_pp else None
            r_peer = per_page / peer_pp if peer_pp else None
            rows.append(
                {
                    "kind": g["kind"],
                    "subject": g["subject"],
                    "leaf": g["leaf"],
                    "leaves": leaves,
                    "op": op,
                    "ns_per_iter": ns_iter,
                    "ns_per_page": per_page,
                    "floor": floor_kind,
                    "floor_ns_per_page": floor_pp,
                    "ratio_to_floor": r_floor,
                    "fastest_peer": fastest_name,
                    "fastest_peer_ns_per_page": peer_pp,
                    "ratio_to_fastest_peer": r_peer,
                    "floor_target": verdict(r_floor, FLOOR_TARGET) if g["kind"] == "tdp" else "",
                    "peer_target": verdict(r_peer, PEER_TARGET) if g["kind"] == "tdp" else "",
                    "table_bytes": g["table_bytes"],
                    "table_bytes_min": g["table_bytes_min"],
                    "cached_bytes": g["cached_bytes"],
                    "metadata_bytes_per_table": g["metadata_bytes_per_table"],
                    "table_bytes_after_unmap": g["table_bytes_after_unmap"],
                }
            )
    return rows


def write_csv(rows, path):
    fields = [
        "kind", "subject", "leaf", "leaves", "op", "ns_per_iter", "ns_per_page", "floor",
        "floor_ns_per_page", "ratio_to_floor", "fastest_peer", "fastest_peer_ns_per_page",
        "ratio_to_fastest_peer", "floor_target", "peer_target", "table_bytes", "table_bytes_min",
        "cached_bytes", "metadata_bytes_per_table", "table_bytes_after_unmap",
    ]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in rows:
            out = {}
            for k in fields:
                v = r.get(k)
                if isinstance(v, float):
                    v = f"{v:.6g}"
                out[k] = "" if v is None else v
            w.writerow(out)


def build_shared_rows(groups, est):
    """One row per (shared group, bench) measured, for the CSV (op = the bench's name)."""
    rows = []
    for g in sorted((g for g in groups.values() if g["kind"] == "shared"),
                    key=lambda g: (g.get("order", 0), g["group"])):
        for bench, _title in SHARED_BENCHES:
            ns_iter = est.get((g["group"], bench))
            if ns_iter is None:
                continue
            rows.append({"kind": "shared", "subject": g["subject"], "leaf": g["leaf"],
                         "leaves": g["leaves"], "op": bench, "ns_per_iter": ns_iter,
                         "ns_per_page": ns_iter / g["leaves"]})
    return rows


def verdict_at_most(ratio, target):
    """'met' or 'missed', for a ratio that should be at most `target` (two decimals)."""
    if ratio is None:
        return "n/a"
    if ratio <= target:
        return "met"
    return f"missed ({ratio / target:.2f}× over)"


def verdict_at_least(ratio, target):
    """'met' or 'missed', for a ratio that should be at least `target`."""
    if ratio is None:
        return "n/a"
    if ratio >= target:
        return "met"
    return f"missed ({target / ratio:.2f}× short)"


def shared_section(groups, est, run=None):
    """The markdown lines of the shared-mode section (empty if shared.rs did not run)."""
    shared = sorted((g for g in groups.values() if g["kind"] == "shared"),
                    key=lambda g: (g.get("order", 0), g["group"]))
    shared = [g for g in shared if any((g["group"], b) in est for b, _ in SHARED_BENCHES)]
    if not shared:
        return []
    out = []
    w = out.append
    w("## Shared mode: map page by page, one thread and two")
    w("")
    w("From `benches/benches/shared.rs` (issue 17, item 10): 1 GiB of 4 KiB pages mapped into "
      "an empty tree with one map call per page (262,144 calls), through the explicit API "
      "(reference), the tree's exclusive mode, and its shared mode on one thread and on two "
      "threads at once, each thread over its own 512 MiB half with its own `Ctx`, "
      "`PendingFlush` and read-side guard. In the tree benches every table the run adds is "
      "reserved before the timed part (`Ctx::topup`), so the timed loop never calls the host "
      "(checked); one `PendingFlush` per caller for the whole run. The two-thread time runs "
      "from the first thread's start to the last one's end. Each run is checked after its timed "
      "part (sampled translations through `query`, the leaf count) and torn down outside it.")
    w("")
    if run:
        w(f"Run: commit `{run.get('commit', '?')}`, {run.get('cpus', '?')} CPUs available, "
          f"{run.get('cpu', '?')}.")
        w("")
    w("ns per page (median time of the 262,144 calls / 262,144) and throughput:")
    w("")
    head = ["API"] + [f"{g['subject']} ns/page" for g in shared] + \
        [f"{g['subject']} Mpages/s" for g in shared]
    w("| " + " | ".join(head) + " |")
    w("|" + "---|" * len(head))
    for bench, title in SHARED_BENCHES:
        vals = [est.get((g["group"], bench)) for g in shared]
        if all(v is None for v in vals):
            continue
        pp = [v / g["leaves"] if v is not None else None for v, g in zip(vals, shared)]
        line = [title] + [fmt_ns(x) for x in pp]
        line += [f"{1e3 / x:.1f}" if x else "—" for x in pp]
        w("| " + " | ".join(line) + " |")
    w("")
    w(f"Targets: shared mode on one thread costs at most {SHARED_1T_TARGET}× exclusive mode per "
      f"page; two threads over disjoint ranges reach at least {SHARED_2T_TARGET}× the "
      "one-thread throughput.")
    w("")
    w("| arch | shared 1t / exclusive | target ≤ 1.2 | 2t throughput / 1t | target ≥ 1.7 | "
      "exclusive / `Table::map_with` |")
    w("|---|---|---|---|---|---|")
    for g in shared:
        e = {b: est.get((g["group"], b)) for b, _ in SHARED_BENCHES}
        r1 = (e["shared_map_pages_1t"] / e["excl_map_pages"]
              if e["shared_map_pages_1t"] and e["excl_map_pages"] else None)
        # Same number of pages in both: throughput ratio = time ratio inverted.
        r2 = (e["shared_map_pages_1t"] / e["shared_map_pages_2t"]
              if e["shared_map_pages_1t"] and e["shared_map_pages_2t"] else None)
        rt = (e["excl_map_pages"] / e["table_map_pages"]
              if e["excl_map_pages"] and e["table_map_pages"] else None)
        w(f"| {g['subject']} | {fmt_ratio(r1)} | {verdict_at_most(r1, SHARED_1T_TARGET)} | "
          f"{fmt_ratio(r2)} | {verdict_at_least(r2, SHARED_2T_TARGET)} | {fmt_ratio(rt)} |")
    w("")
    return out


def leaf_order(groups):
    leaves = {}
    for g in groups.values():
        if "leaf_bytes" in g:
            leaves[g["leaf"]] = g["leaf_bytes"]
    return sorted(leaves, key=lambda k: leaves[k])


def markdown(groups, machine, rows, est, stale, duration, before=None, notes="", shared_run=None):
    tdp = [r for r in rows if r["kind"] == "tdp"]
    # Columns in the order the run measured them (x86 first, then arm64, ...; peers last).
    first = {}
    for g in groups.values():
        if g["kind"] in ("tdp", "peer"):
            first[g["subject"]] = min(first.get(g["subject"], 1 << 30), g.get("order", 1 << 20))
    measured = {r["subject"] for r in rows}
    subjects = sorted({r["subject"] for r in tdp}, key=lambda s: (first.get(s, 0), s))
    peer_names = sorted({g["subject"] for g in groups.values()
                         if g["kind"] == "peer" and g["subject"] in measured},
                        key=lambda s: (first.get(s, 0), s))
    by = {(r["subject"], r["leaf"], r["op"]): r for r in rows}

    out = []
    w = out.append
    w("# Benchmarks")
    w("")
    w("Generated by `benches/report.py` from one criterion run of `benches/benches/explicit.rs` "
      "(issue 14) and `benches/benches/shared.rs` (issue 17). Do not edit by hand: rerun the "
      "command below.")
    w("")
    w("## Machine and command")
    w("")
    if machine:
        w(f"- CPU: {machine['cpu']} ({machine.get('cpu_id', '')}, {machine.get('mhz', '?')} MHz, "
          f"cache {machine.get('cache', '?')}); {machine['cpus']} CPUs available to the run; "
          f"{machine['os']}/{machine['arch']}. The machine is shared with other work, so medians "
          "can move between runs: compare cells of the same run.")
        w(f"- Code: commit `{machine.get('commit', '?')}`, {machine.get('rustc', '?')}, "
          "release profile of the workspace.")
    w(f"- Reproduce: `{COMMAND}` (writes this file and `benchmarks.csv`).")
    w("- Settings: criterion 0.5, 10 samples, 0.5 s warm-up, 2 s measurement per benchmark "
      "(set in `config()` of the bench; the command line overrides them).")
    if duration:
        w(f"- Duration of the run: {duration}.")
    w(f"- Report generated {datetime.date.today().isoformat()}.")
    if stale:
        w(f"- {len(stale)} older results found beside this run were ignored (stale).")
    w("")
    w("## What is measured")
    w("")
    w("Each architecture configuration maps 1 GiB of guest memory with leaves of one size "
      "(every leaf size the geometry has up to 1 GiB) and runs the explicit API on it: map the "
      "range in one call, map it page by page, query every page, write-protect the range "
      "(RWX → RX), unmap the range in one call, unmap it page by page, split a 1 GiB leaf (or "
      "the largest leaf level) into pages and collapse them back, and tear the table down. Each "
      "operation starts from a fresh table built outside the timed part and works on it in "
      "place (criterion's `iter_batched_ref`: no table value is moved into or out of the timed "
      "part, for the engine or the peers; teardown is the drop of a moved-in table). "
      "**ns per page** is the median time of one operation divided by the number of leaves "
      "(for 2M/1G groups: per 2 MiB / 1 GiB leaf).")
    w("")
    w("- **Table memory** for the engine comes from the benches' direct-map host "
      "(`benches/src/direct.rs`): one window allocated and touched up front, physical address = "
      "virtual address, a warm last-in-first-out free list per table size, a 16-byte metadata "
      "record per table in a side array, no TLB to flush. That is the shape of the peers' frame "
      "pool (a vector push/pop per frame, physical = virtual, nothing flushed) and of a "
      "hypervisor's own direct map. `host_alloc_free` shows what that host alone costs for the "
      "tree's tables. Every workload's correctness checks run on the testing kit's `HeapHost` "
      "(bounds-checked window, leak accounting) before timing; `TDP_BENCH_HOST=heap` times on it "
      "too (the issue-18 before/after section below was measured that way, on both sides). "
      "Allocation is included in every time, for the engine and the peers.")
    w("- **Per-call rows** (map and unmap one leaf per call, query every page): the engine's "
      "`query` row calls `Table::leaf` (the query whose attributes and A/D state are decoded only "
      "when asked for; the row reads the address), `map`/`unmap` take the single-entry path "
      "(`tdp-core/src/ops/single.rs`) and `Table` keeps its cursor on the last table reached "
      "across calls, as ptm's cursor does.")
    w("- **Floor**: a raw loop over as many 8-byte words as the group has leaves, doing the least "
      "memory work the operation needs: plain store (map, split), plain load (query, collapse), "
      "plain and-not (write-protect: the workload presets A/D, KVM's policy, so no entry has bits "
      "hardware may set meanwhile and no locked update is needed; a locked and-not per entry is "
      "shown as a reference row), zeroing the bytes of the minimal tree (unmap, teardown). The "
      "floor column shows the floor of the first architecture; each ratio uses its own group's "
      "floor (the word count is the same, the tree's bytes differ slightly).")
    w("- **Peers** (x86-style 4-level tables, the geometry they share; each checked after its "
      "work: sampled translations after map, protect and split, none after unmap, every frame "
      "back after teardown): `ptm` page_table_multiarch 0.6.2 `X64PageTable`; `a64p` "
      "aarch64-paging 0.12.3 `Mapping<_, Stage2>`; `ptg` page-table-generic 0.9.1 with an "
      "EPT-like user entry; `x64` x86_64 0.15.5 `OffsetPageTable`. `—` means the peer has no "
      "such operation (see `benches/benches/peers/*.rs` for how each one does each operation).")
    w("")
    w("Configurations (one constructor each in `benches/src/formats.rs`):")
    w("")
    for label, text in CONFIGS:
        if any(g.get("subject") == label for g in groups.values()):
            w(f"- `{label}`: {text}")
    w("")
    w("How each peer does each operation (its users' way; shared/anchors/rust-peers.md §1):")
    w("")
    w("| operation | ptm | a64p | ptg | x64 |")
    w("|---|---|---|---|---|")
    for row in PEER_OPS:
        w("| " + " | ".join(row) + " |")
    w("")
    w("## Targets")
    w("")
    w("Every operation at least 2× faster than the fastest peer (ratio ≤ 0.5) and within 2× of "
      "its floor; table memory within 1.1× of the minimum for the layout; at most 16 bytes of "
      "metadata per table page.")
    w("")
    n_floor = [r for r in tdp if r["ratio_to_floor"] is not None]
    n_peer = [r for r in tdp if r["ratio_to_fastest_peer"] is not None]
    met_floor = sum(1 for r in n_floor if r["ratio_to_floor"] <= FLOOR_TARGET)
    met_peer = sum(1 for r in n_peer if r["ratio_to_fastest_peer"] <= PEER_TARGET)
    tdp_groups = [g for g in groups.values() if g["kind"] == "tdp"]
    met_mem = sum(1 for g in tdp_groups if g["table_bytes"] <= MEMORY_TARGET * g["table_bytes_min"])
    met_meta = sum(1 for g in tdp_groups if g["metadata_bytes_per_table"] <= METADATA_TARGET)
    w("| target | met | missed |")
    w("|---|---|---|")
    w(f"| ≥ 2× faster than the fastest peer | {met_peer} | {len(n_peer) - met_peer} |")
    w(f"| within 2× of the floor | {met_floor} | {len(n_floor) - met_floor} |")
    w(f"| table memory ≤ 1.1× minimum | {met_mem} | {len(tdp_groups) - met_mem} |")
    w(f"| metadata ≤ 16 B per table page | {met_meta} | {len(tdp_groups) - met_meta} |")
    w("")

    for leaf in leaf_order(groups):
        leaf_subjects = [s for s in subjects if any(k[0] == s and k[1] == leaf for k in by)]
        leaf_peers = [p for p in peer_names if any(k[0] == p and k[1] == leaf for k in by)]
        if not leaf_subjects and not leaf_peers:
            continue
        leaves = next(g["leaves"] for g in groups.values() if g.get("leaf") == leaf)
        w(f"## {leaf} leaves ({leaves:,} over 1 GiB): ns per page")
        w("")
        head = ["operation"] + leaf_subjects + ["floor"] + leaf_peers
        w("| " + " | ".join(head) + " |")
        w("|" + "---|" * len(head))
        for op, title, _ in OPS:
            cells = [by.get((s, leaf, op)) for s in leaf_subjects]
            pcells = [by.get((p, leaf, op)) for p in leaf_peers]
            if not any(cells) and not any(pcells):
                continue
            floor = next((c for c in cells + pcells if c and c["floor_ns_per_page"] is not None), None)
            floor_txt = (f"{fmt_ns(floor['floor_ns_per_page'])} ({FLOOR_TITLE[floor['floor']]})"
                         if floor else "—")
            line = [title] + [fmt_ns(c["ns_per_page"]) if c else "—" for c in cells]
            line += [floor_txt] + [fmt_ns(c["ns_per_page"]) if c else "—" for c in pcells]
            w("| " + " | ".join(line) + " |")
        # Reference rows (no targets): what the heap host alone costs for the tree's tables, and
        # a locked read-modify-write per entry.
        host = [est.get((f"{s}_{leaf}", "host_alloc_free")) for s in leaf_subjects]
        floor_group = next((g["floor"] for g in groups.values()
                            if g.get("leaf") == leaf and g["kind"] in ("tdp", "peer")), None)
        atomic = est.get((floor_group, "atomic_and_not")) if floor_group else None
        if any(v is not None for v in host) or atomic is not None:
            line = ["(reference) heap host alone: alloc + free the tree's tables"]
            line += [fmt_ns(v / leaves) if v is not None else "—" for v in host]
            line += [f"{fmt_ns(atomic / leaves)} (atomic and-not)" if atomic is not None else "—"]
            line += ["—"] * len(leaf_peers)
            w("| " + " | ".join(line) + " |")
        w("")
        if not leaf_subjects:
            continue
        w(f"### {leaf}: ratios and targets")
        w("")
        w("| operation | arch | ns/page | floor ns/page | × floor | fastest peer | × fastest peer | within 2× of floor | ≥ 2× faster than peer |")
        w("|---|---|---|---|---|---|---|---|---|")
        for op, title, _ in OPS:
            for s in leaf_subjects:
                r = by.get((s, leaf, op))
                if not r:
                    continue
                peer_txt = (f"{r['fastest_peer']} {fmt_ns(r['fastest_peer_ns_per_page'])}"
                            if r["fastest_peer"] else "—")
                w(f"| {title} | {s} | {fmt_ns(r['ns_per_page'])} | "
                  f"{fmt_ns(r['floor_ns_per_page'])} | {fmt_ratio(r['ratio_to_floor'])} | "
                  f"{peer_txt} | {fmt_ratio(r['ratio_to_fastest_peer'])} | "
                  f"{r['floor_target']} | {r['peer_target'] or 'n/a'} |")
        w("")

    if before:
        w("## Engine hot spots fixed: before → after")
        w("")
        if notes:
            w(notes.strip())
            w("")
        w("ns per page, median, the earlier run (`benches/results/before-hotspots.csv`, engine "
          "before the changes) against this run. Both runs on the same machine; the earlier one "
          "shared it with more work, so small differences are noise.")
        w("")
        w("| configuration | leaf | operation | before | after | speed-up |")
        w("|---|---|---|---|---|---|")
        for r in tdp:
            b = before.get((r["subject"], r["leaf"], r["op"]))
            if b is None or r["subject"] not in ("ept-ad", "arm64-4k", "ppc-64k") or r["leaf"] not in ("4K", "64K"):
                continue
            a = r["ns_per_page"]
            w(f"| {r['subject']} | {r['leaf']} | {r['op']} | {fmt_ns(b)} | {fmt_ns(a)} | "
              f"{fmt_ratio(b / a) if a else '—'} |")
        w("")
        w("Every engine cell of both runs is in the two CSV files.")
        w("")
    out.extend(shared_section(groups, est, shared_run))
    w("## Memory")
    w("")
    w("Table bytes of the tree after mapping the range (the root included), against the fewest "
      "any engine needs for that layout; the engine's reserve of free tables kept for the next "
      "operations (`cached`, not part of the tree); metadata per table page; and table bytes "
      "still held after unmapping the range. Peers: frames counted in the pool; their metadata "
      "from their own structures (none keeps per-table records: they find tables through entries "
      "and pay with walks, rescans or never freeing).")
    w("")
    w("| subject | leaves | table bytes | minimum | × minimum | cached | metadata B/table | after unmap | memory target | metadata target |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    order = {s: i for i, s in enumerate(subjects + peer_names)}
    lorder = {l: i for i, l in enumerate(leaf_order(groups))}
    for g in sorted((g for g in groups.values() if g["kind"] in ("tdp", "peer")),
                    key=lambda g: (g["kind"] != "tdp", lorder.get(g["leaf"], 0), order.get(g["subject"], 0))):
        ratio = g["table_bytes"] / g["table_bytes_min"]
        mem_v = verdict(ratio, MEMORY_TARGET) if g["kind"] == "tdp" else ""
        meta_v = ("met" if g["metadata_bytes_per_table"] <= METADATA_TARGET else "missed") if g["kind"] == "tdp" else ""
        w(f"| {g['subject']} {g['leaf']} | {g['leaves']:,} | {size_bytes(g['table_bytes'])} | "
          f"{size_bytes(g['table_bytes_min'])} | {fmt_ratio(ratio)} | {size_bytes(g['cached_bytes'])} | "
          f"{g['metadata_bytes_per_table']} | {size_bytes(g['table_bytes_after_unmap'])} | {mem_v} | {meta_v} |")
    w("")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--criterion", default=os.environ.get("CRITERION_HOME")
                    or os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "criterion"))
    ap.add_argument("--md", default=os.path.join(ROOT, "BENCHMARKS.md"))
    ap.add_argument("--csv", default=os.path.join(ROOT, "benchmarks.csv"))
    ap.add_argument("--duration", default="", help="wall time of the run, for the record")
    ap.add_argument("--before", default="",
                    help="an earlier benchmarks.csv (same host) to compare with, e.g. "
                         "benches/results/before-hotspots.csv (issue 14's run); skipped if empty")
    ap.add_argument("--notes", default=os.path.join(ROOT, "benches", "results", "hotspots.md"),
                    help="text describing the engine changes between the runs (skipped if missing)")
    ap.add_argument("--extra", default=os.path.join(ROOT, "benches", "results", "issue18-before-after.md"),
                    help="a markdown section appended as is (skipped if missing)")
    ap.add_argument("--shared-only", action="store_true",
                    help="print the shared-mode section (benches/benches/shared.rs) to stdout "
                         "and write nothing")
    args = ap.parse_args()
    before = {}
    if args.before and os.path.exists(args.before):
        with open(args.before, newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                if r["kind"] == "tdp":
                    before[(r["subject"], r["leaf"], r["op"])] = float(r["ns_per_page"])
    notes = ""
    if os.path.exists(args.notes):
        with open(args.notes, encoding="utf-8") as f:
            notes = f.read()

    groups, machine, machine_mtime, runs = read_meta(args.criterion)
    est, stale = read_estimates(args.criterion, not_before_fn(groups, machine_mtime, runs))
    shared_run = runs.get("shared", (None, 0.0))[0]
    if args.shared_only:
        lines = shared_section(groups, est, shared_run)
        if not lines:
            sys.exit("no results of benches/benches/shared.rs found")
        print("\n".join(lines))
        return
    rows = build_rows(groups, est)
    if not rows:
        sys.exit("no results of this run found")
    write_csv(rows + build_shared_rows(groups, est), args.csv)
    extra = ""
    if args.extra and os.path.exists(args.extra):
        with open(args.extra, encoding="utf-8") as f:
            extra = "\n" + f.read()
    with open(args.md, "w", encoding="utf-8") as f:
        f.write(markdown(groups, machine, rows, est, stale, args.duration, before, notes,
                         shared_run) + extra)
    print(f"wrote {args.md} and {args.csv}: {len(rows)} results"
          + (f", {len(stale)} stale ignored" if stale else ""))


if __name__ == "__main__":
    main()
