#!/usr/bin/env python3
"""Turns an Nsight Compute CSV export into a markdown summary, one row per kernel.

    ncu --import run.ncu-rep --csv --page raw > run.csv        # every collected metric (wide)
    ncu --import run.ncu-rep --csv --page details > run.csv    # the sections' tables (long)
    profiles/ncu_summary.py run.csv [--title "embbag_fwd/v4_persistent_stream"] [--out run.md]
        [--simt-access reports/simt_access.md --op embbag_fwd --variant v4_persistent_stream]

Both layouts are read (profiles/ncu.sh writes the raw page). Lines before the CSV header
(==PROF== lines, the program's own output) are skipped; numbers may carry thousands separators;
"n/a" is no value. Launches of the same kernel are averaged. Columns:
  duration            gpu__time_duration.sum                                 (details: Duration)
  DRAM %              dram__throughput.avg.pct_of_peak_sustained_elapsed,
                      or gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed (DRAM Throughput)
  memory SOL %        gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed
                                                                             (Memory Throughput)
  SM SOL %            sm__throughput.avg.pct_of_peak_sustained_elapsed (Compute (SM) Throughput)
  achieved occupancy  sm__warps_active.avg.pct_of_peak_sustained_active   (Achieved Occupancy)
  L2 hit %            lts__t_sector_hit_rate.pct                             (L2 Hit Rate)
  DRAM GB/s           (dram__bytes_read.sum + dram__bytes_write.sum) / duration, when collected
  ld / st sectors     global load (store) sectors per request, l1tex__t_sectors_pipe_lsu_mem_
  per request         global_op_ld.sum / l1tex__t_requests_..._ld.sum (_st for stores), when
                      collected: what simt's AccessCounter predicts without a GPU (simt.h;
                      SIMT_ACCESS_REPORT=1), 16 for a warp's 16-byte lanes over one span
  top stalls          the largest of smsp__average_warps_issue_stalled_<reason>_per_issue_active
                      .ratio (cycles a warp waits per issued instruction; WarpStateStats), else
                      smsp__warp_issue_stalled_<reason>_per_warp_active.pct, else the PC-sampling
                      counts smsp__pcsamp_warps_issue_stalled_<reason>; 'selected' (issuing) is
                      not a stall. The details page has no per-reason breakdown: export the raw
                      page for it.
"""
import argparse
import csv
import io
import re
import sys
from collections import OrderedDict

# summary column -> (raw metric names, details-page metric names)
METRICS = OrderedDict([
    ("duration", (["gpu__time_duration.sum"], ["Duration"])),
    ("dram_pct", (["dram__throughput.avg.pct_of_peak_sustained_elapsed",
                   "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed"], ["DRAM Throughput"])),
    ("mem_sol", (["gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed"],
                 ["Memory Throughput"])),
    ("sm_sol", (["sm__throughput.avg.pct_of_peak_sustained_elapsed"],
                ["Compute (SM) Throughput"])),
    ("occupancy", (["sm__warps_active.avg.pct_of_peak_sustained_active"], ["Achieved Occupancy"])),
    ("theoretical", (["sm__maximum_warps_per_active_cycle_pct"], ["Theoretical Occupancy"])),
    ("l2_hit", (["lts__t_sector_hit_rate.pct"], ["L2 Hit Rate"])),
    ("dram_read", (["dram__bytes_read.sum"], [])),
    ("dram_write", (["dram__bytes_write.sum"], [])),
    ("registers", (["launch__registers_per_thread"], ["Registers Per Thread"])),
    ("ld_sectors", (["l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum"], [])),
    ("ld_requests", (["l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum"], [])),
    ("st_sectors", (["l1tex__t_sectors_pipe_lsu_mem_global_op_st.sum"], [])),
    ("st_requests", (["l1tex__t_requests_pipe_lsu_mem_global_op_st.sum"], [])),
])
STALL_FAMILIES = [
    (re.compile(r"^smsp__average_warps_issue_stalled_(\w+?)_per_issue_active\.ratio$"),
     "cycles per issued instruction"),
    (re.compile(r"^smsp__warp_issue_stalled_(\w+?)_per_warp_active\.pct$"), "% of active warps"),
    (re.compile(r"^smsp__pcsamp_warps_issue_stalled_(\w+)$"), "PC samples"),
]
NOT_STALLS = {"selected"}
TIME_SCALE_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3,
                 "ms": 1e3, "second": 1e6, "s": 1e6}
BYTE_SCALE = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "Tbyte": 1e12,
              "KB": 1e3, "MB": 1e6, "GB": 1e9}


def number(text):
    """ncu's printed number ('1,234.5', '12.0', 'n/a', '') as a float, or None."""
    t = (text or "").strip().replace(",", "")
    if not t or t.lower() in ("n/a", "nan", "-"):
        return None
    try:
        return float(t)
    except ValueError:
        return None


def csv_part(text):
    """The CSV from its header line on: ncu prints ==PROF== lines and the program's output first."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith('"ID"') or line.startswith("ID,"):
            return "\n".join(lines[i:])
    raise ValueError("no ncu CSV header (a line starting with \"ID\") found: export with "
                     "`ncu --import FILE.ncu-rep --csv --page raw`")


def parse(text):
    """Launches as a list of {id, kernel, metrics: {name: (value, unit)}}, in file order."""
    rows = list(csv.reader(io.StringIO(csv_part(text))))
    header = rows[0]
    col = {name: i for i, name in enumerate(header)}
    for need in ("ID", "Kernel Name"):
        if need not in col:
            raise ValueError("ncu CSV without a '%s' column" % need)
    launches = OrderedDict()

    def launch(r):
        key = r[col["ID"]]
        if key not in launches:
            launches[key] = {"id": key, "kernel": r[col["Kernel Name"]], "metrics": {}}
        return launches[key]

    if "Metric Name" in col and "Metric Value" in col:  # details page: one row per metric
        unit_col = col.get("Metric Unit")
        for r in rows[1:]:
            if len(r) < len(header):
                continue
            unit = r[unit_col] if unit_col is not None else ""
            launch(r)["metrics"][r[col["Metric Name"]]] = (number(r[col["Metric Value"]]), unit)
    else:  # raw page: one row per launch, a units row under the header
        units = [""] * len(header)
        body = rows[1:]
        if body and not body[0][col["ID"]].strip():
            units, body = body[0], body[1:]
        first_metric = max(col["Kernel Name"], col.get("CC", 0), col.get("Device", 0)) + 1
        for r in body:
            if len(r) < len(header):
                continue
            m = launch(r)["metrics"]
            for i in range(first_metric, len(header)):
                m[header[i]] = (number(r[i]), units[i] if i < len(units) else "")
    return list(launches.values())


def lookup(metrics, names):
    for n in names:
        if n in metrics and metrics[n][0] is not None:
            return metrics[n]
    return None


def summarise(launch):
    m = launch["metrics"]
    s = {}
    for key, (raw, details) in METRICS.items():
        hit = lookup(m, raw + details)
        if hit is None:
            continue
        value, unit = hit
        if key == "duration":
            value *= TIME_SCALE_US.get(unit, 1e-3 if not unit else 1.0)
        elif key in ("dram_read", "dram_write"):
            value *= BYTE_SCALE.get(unit, 1)
        s[key] = value
    for pattern, what in STALL_FAMILIES:
        stalls = {}
        for name, (value, _) in m.items():
            g = pattern.match(name)
            if g and value is not None and not g.group(1).endswith("_not_issued") \
                    and g.group(1) not in NOT_STALLS:
                stalls[g.group(1)] = value
        if any(v > 0 for v in stalls.values()):
            s["stalls"], s["stall_unit"] = stalls, what
            break
    return s


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def fmt(x, digits=1):
    return "—" if x is None else "%.*f" % (digits, x)


def markdown(launches, title):
    kernels = OrderedDict()
    for l in launches:
        kernels.setdefault(l["kernel"], []).append(summarise(l))
    out = ["## ncu summary: %s\n" % title if title else "## ncu summary\n"]
    out.append("| kernel | launches | duration (µs) | DRAM % of peak | memory SOL % | SM SOL % "
               "| achieved occupancy % | theoretical occupancy % | L2 hit % | DRAM GB/s "
               "| registers | top stall reasons | ld / st sectors per request |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- "
               "| ---: |")
    units = set()
    for kernel, ss in kernels.items():
        avg = {k: mean([s.get(k) for s in ss]) for k in METRICS}
        gbs = None
        if avg.get("duration") and (avg.get("dram_read") is not None or
                                    avg.get("dram_write") is not None):
            gbs = ((avg.get("dram_read") or 0) + (avg.get("dram_write") or 0)) / (
                avg["duration"] * 1e-6) / 1e9
        stalls = {}
        for s in ss:
            for r, v in s.get("stalls", {}).items():
                stalls.setdefault(r, []).append(v)
            if s.get("stall_unit"):
                units.add(s["stall_unit"])
        stalls = {r: mean(v) for r, v in stalls.items()}
        total = sum(stalls.values())
        top = sorted(stalls.items(), key=lambda kv: -kv[1])[:3]
        top_text = ", ".join("%s %.2f (%.0f%%)" % (r, v, 100 * v / total) for r, v in top) \
            if total > 0 else "not in this export"
        per_request = ["%s" % fmt(avg[s] / avg[r]) if avg.get(s) is not None and avg.get(r)
                       else "—" for s, r in (("ld_sectors", "ld_requests"),
                                             ("st_sectors", "st_requests"))]
        name = kernel if len(kernel) <= 60 else kernel[:57] + "..."
        out.append("| `%s` | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            name.replace("|", "/"), len(ss), fmt(avg.get("duration"), 2), fmt(avg.get("dram_pct")),
            fmt(avg.get("mem_sol")), fmt(avg.get("sm_sol")), fmt(avg.get("occupancy")),
            fmt(avg.get("theoretical")), fmt(avg.get("l2_hit")), fmt(gbs),
            fmt(avg.get("registers"), 0), top_text, " / ".join(per_request)))
    out.append("")
    if units:
        out.append("Stall values: %s (share of all stall reasons in brackets)." %
                   " / ".join(sorted(units)))
    else:
        out.append("No per-reason stall metrics in this export (the details page has none): "
                   "`ncu --import FILE.ncu-rep --csv --page raw` carries them when the "
                   "WarpStateStats section was collected.")
    return "\n".join(out) + "\n"


def simt_counts(path, op, variant, dtype):
    """The rows of `variant` in section "## op, dtype" of tools/simt_access_report.py's page, as
    a markdown section to read beside the measured sectors per request."""
    head = "### simt's count for %s/%s, %s (%s)\n" % (op, variant, dtype, path)
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as e:
        return head + "\nNot read: %s.\n" % e
    section = "## %s, %s" % (op, dtype)
    rows, inside = [], False
    for line in lines:
        if line.startswith("## "):
            inside = line.strip() == section
        elif inside and line.startswith("| %s |" % variant):
            rows.append(line)
    if not rows:
        return head + "\nNo rows for this variant in that section.\n"
    return "\n".join([head, "The same sectors per request, counted on the CPU at a small shape "
                       "(the page says which); a measured column above that differs points at "
                       "an access simt does not count or groups differently.", "",
                       "| variant | kernel | access | where | requests | sectors / request "
                       "| used |", "| --- | --- | --- | --- | ---: | ---: | ---: |"] + rows) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", nargs="+", help="ncu CSV export(s); '-' reads stdin")
    ap.add_argument("--title", help="heading (e.g. the NVTX range profiled)")
    ap.add_argument("--out", help="write the markdown here (default: stdout)")
    ap.add_argument("--simt-access", metavar="FILE",
                    help="reports/simt_access.md: append simt's counts for --op/--variant/--dtype")
    ap.add_argument("--op", help="with --simt-access: the op (embbag_fwd, pk_topk_bwd, ...)")
    ap.add_argument("--variant", help="with --simt-access: the variant")
    ap.add_argument("--dtype", default="fp32", help="with --simt-access: fp32 or bf16")
    args = ap.parse_args()
    if args.simt_access and not (args.op and args.variant):
        ap.error("--simt-access needs --op and --variant")
    parts = []
    for path in args.csv:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8",
                                                           errors="replace").read()
        try:
            launches = parse(text)
        except ValueError as e:
            sys.exit("ncu_summary: %s: %s" % (path, e))
        if not launches:
            sys.exit("ncu_summary: %s: no kernel launches in the export (did the NVTX filter "
                     "match any launch?)" % path)
        parts.append(markdown(launches, args.title or (path if len(args.csv) > 1 else None)))
    if args.simt_access:
        parts.append(simt_counts(args.simt_access, args.op, args.variant, args.dtype))
    text = "\n".join(parts)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
