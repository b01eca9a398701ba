#!/usr/bin/env python3
"""Writes a machine's report from the saved benchmark JSON: reports/<machine>/README.md + SVG plots.

Every *.json in the folder except machine.json is read (one without a "benchmarks" list, another
tool's record, is skipped with a note): the Google Benchmark output of the bench_*
binaries (rows `<op>/<backend>/<variant>/<shape>`, ceilings `ceiling/<host|cuda>/<what>`) and of
the peers in tools/peers/ (same layout, backend `torch_cpu` / `torch_cuda`). The report holds:
  - the machine: CPU model and features, cores, caches, GPU name, driver and clocks (from
    machine.json, which tools/report_run.sh and tools/device_check.sh write), the commit;
  - the ceilings each run measured (bandwidth in GB/s, compute in TFLOP/s);
  - per op and shape one table of the median rows, with the columns the rows carry: time, GB/s,
    TFLOP/s, % of the measured bandwidth / compute ceiling, % of the floor, % of the nominal
    peak, and x PyTorch (the peer's time over ours, same op, direction, shape and device);
    GPU backends with no rows say "not measured";
  - a roofline plot per op, shape and device (SVG, matplotlib's Agg backend): arithmetic
    intensity (declared flops / declared bytes) against achieved GFLOP/s, log-log, the measured
    bandwidth ceiling as the slanted roof and the measured compute ceiling as the flat one;
  - where a composed op's time goes (bench_memory_layer and its peer write one row per stage,
    `<row>/stage:<name>`): per op and shape a table of each stage's declared bytes and flops, its
    floor against the measured ceilings, and per run its milliseconds, share of the call and %
    of that floor, the PyTorch peer beside ours; then each run's largest stages in one line;
  - notes.md of the folder, when present, verbatim (what the numbers mean, written by a person).
The report is generated, never edited by hand. Only the standard library is needed; without
matplotlib the markdown is still written and says how to get the plots.

    tools/report.py reports/cpu-amd-epyc               # regenerate from the saved JSON
    tools/report.py tests/tools/fixtures/report --out /tmp/r   # write elsewhere
    tools/report_run.sh                                # rerun the benchmarks, then this

matplotlib: the running python3's, else the interpreter named by $MEMLAYERS_PLOT_PYTHON (default
/usr/bin/python3, where Debian's python3-matplotlib lives; "none" disables the fallback), which
then runs this script instead.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
from collections import OrderedDict

OURS = ("reference", "cpu", "simt", "cuda")  # the project's backends; anything else is a peer
CORRECTNESS = ("reference", "simt")  # timed only for completeness: not plotted
NAME = re.compile(r"^(?P<op>[a-z0-9_]+)/(?P<backend>[a-z0-9_]+)/(?P<variant>[^/]+)/(?P<shape>[^/]+)")
CEILING = re.compile(r"^ceiling/(?P<device>[^/]+)/(?P<what>[^/]+)")
STAGE = re.compile(r"^(?P<row>[a-z0-9_]+/[a-z0-9_]+/[^/]+/[^/]+)/stage:(?P<stage>[a-z_]+)(/|$)")
SUFFIXES = ("_compact", "_dense", "_sparse")
# CPU flags worth a line in the report (what the kernels' SIMD paths and the GEMM ceiling use).
CPU_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8",
                "asimd", "sve", "sve2", "bf16")
PLOT_HELP = ("install matplotlib (Debian: `apt-get install python3-matplotlib`, which "
             "tools/install_deps.sh does; or `pip install matplotlib`) and rerun "
             "`tools/report.py %s`")


# ---- reading the runs ----

def load_runs(folder):
    runs = []
    for f in sorted(os.listdir(folder)):
        if not f.endswith(".json") or f == "machine.json":
            continue
        with open(os.path.join(folder, f)) as fh:
            try:
                data = json.load(fh)
            except json.JSONDecodeError as e:
                sys.exit("report: %s is not valid JSON: %s" % (os.path.join(folder, f), e))
        if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
            # Other tools keep their records beside the runs (sharded_bench.py's
            # sharded_embbag_p*.json, for one): their own pages cover them.
            print("report: skipping %s: no 'benchmarks' list, not Google Benchmark JSON"
                  % os.path.join(folder, f), file=sys.stderr)
            continue
        runs.append((f, data))
    if not runs:
        sys.exit("report: no benchmark *.json in %s: run the bench_* binaries with "
                 "--benchmark_out=FILE --benchmark_out_format=json first" % folder)
    return runs


def record_rows(data):
    """The record of each run: its median aggregate, else its one iteration row (--reps 1)."""
    by_run = OrderedDict()
    for b in data.get("benchmarks", []):
        run = b.get("run_name", b["name"])
        by_run.setdefault(run, []).append(b)
    for run, rows in by_run.items():
        median = [b for b in rows if b.get("run_type") == "aggregate"
                  and b.get("aggregate_name") == "median"]
        if median:
            yield median[0]
            continue
        its = [b for b in rows if b.get("run_type") != "aggregate"]
        if its:
            its.sort(key=lambda b: b.get("real_time", 0.0))
            yield its[len(its) // 2]


def ms(b):
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b.get("time_unit", "ns")]
    return b["real_time"] * scale


def gflops_of(b):
    if b.get("TFLOP/s") is not None:
        return b["TFLOP/s"] * 1e3
    return b.get("GFLOP/s")


def device_of(backend):
    """host or cuda: whose ceilings judge a row of this backend."""
    if backend in OURS:
        return "cuda" if backend == "cuda" else "host"
    return "cuda" if backend.endswith("cuda") else "host"


def base_shape(shape):
    for s in SUFFIXES:
        if shape.endswith(s):
            return shape[: -len(s)], s[1:]
    return shape, ""


class Row:
    def __init__(self, fname, g, b):
        self.file = fname
        self.op, self.backend, self.variant, self.shape = g["op"], g["backend"], g["variant"], g["shape"]
        self.b = b
        self.peer = self.backend not in OURS
        self.device = device_of(self.backend)
        self.base, self.form = base_shape(self.shape)
        self.error = b.get("error_message") if b.get("error_occurred") else None

    def get(self, key):
        return self.b.get(key)


class Ceiling:
    def __init__(self, fname, m, b):
        self.file = fname
        self.device, self.what = m.group("device"), m.group("what")
        self.b = b
        self.compute = b.get("GB/s") is None and gflops_of(b) is not None
        self.value = gflops_of(b) if self.compute else b.get("GB/s")  # GFLOP/s or GB/s
        self.gather = self.what.startswith("gather_")  # a gather of rows, not a stream
        self.kind = "compute" if self.compute else "gather" if self.gather else "bandwidth"


class Stage:
    """One stage of a composed op's row: `row` is that row's name (op/backend/variant/shape)."""

    def __init__(self, fname, m, b):
        self.file, self.row, self.name, self.b = fname, m.group("row"), m.group("stage"), b
        g = NAME.match(self.row).groupdict()
        self.op, self.backend, self.variant, self.shape = g["op"], g["backend"], g["variant"], g["shape"]
        self.peer = self.backend not in OURS
        self.device = device_of(self.backend)
        self.error = b.get("error_message") if b.get("error_occurred") else None

    def get(self, key):
        return self.b.get(key)


def collect(runs):
    rows, ceilings, contexts, stages = [], [], [], []
    for fname, data in runs:
        contexts.append((fname, data.get("context", {})))
        for b in record_rows(data):
            m = CEILING.match(b["name"])
            if m:
                if not b.get("error_occurred"):
                    ceilings.append(Ceiling(fname, m, b))
                continue
            m = STAGE.match(b["name"])
            if m:
                stages.append(Stage(fname, m, b))
                continue
            g = NAME.match(b["name"])
            if g:
                rows.append(Row(fname, g.groupdict(), b))
    return rows, ceilings, contexts, stages


def ceilings_for(ceilings, device, files):
    """The bandwidth, compute and gather ceilings of `device` measured by the runs in `files` (the
    first such file that has one); any run's when none of those measured it. A gather ceiling
    (bench_embbag's `gather_<bytes>B_rows`, informational) is never the bandwidth roof."""
    out = {}
    for kind in ("bandwidth", "compute", "gather"):
        pick = [c for c in ceilings if c.device == device and c.kind == kind]
        same = [c for c in pick if c.file in files]
        chosen = (same or pick)
        out[kind] = chosen[0] if chosen else None
    return out


# ---- formatting ----

def fmt(x, digits=1):
    if x is None:
        return "—"
    if abs(x) >= 1e4:
        return "%.0f" % x
    return "%.*f" % (digits, x)


def table(header, align, lines):
    out = ["| " + " | ".join(header) + " |",
           "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return out


def slug(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


# ---- the machine ----

def local_cpuinfo():
    model, flags, cores = None, None, 0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and flags is None:
                    flags = value.split()
                elif key == "processor":
                    cores += 1
    except OSError:
        pass
    return model, flags, cores


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_section(meta, contexts, folder_arg):
    out = ["## Machine\n", "| | |", "| --- | --- |"]
    lmodel, lflags, _ = local_cpuinfo()
    at_report = " (read from this machine when the report was generated; machine.json did not record it)"
    if meta.get("cpu_model"):
        out.append("| CPU | %s |" % meta["cpu_model"])
    else:
        out.append("| CPU | %s%s |" % (lmodel or "unknown", at_report))
    flags = meta.get("cpu_flags")
    if isinstance(flags, str):
        flags = flags.split()
    note = ""
    if flags is None and lflags is not None:
        flags, note = lflags, at_report
    if flags is not None:
        have = [f for f in CPU_FEATURES if f in flags]
        out.append("| CPU features | %s%s |" % (", ".join(have) if have else "none of: " +
                                               ", ".join(CPU_FEATURES), note))
    ctx = next((c for _, c in contexts if c.get("num_cpus")), {})
    cores = meta.get("cpu_cores", ctx.get("num_cpus"))
    threads = ctx.get("threads")
    out.append("| cores | %s%s |" % (cores if cores else "?",
                                       ", %s threads used by the runs" % threads if threads else ""))
    caches = ctx.get("caches", [])
    if caches:
        out.append("| caches | %s |" % ", ".join(
            "L%d %s %s" % (c["level"], c["type"].lower(),
                           "%d MiB" % (c["size"] >> 20) if c["size"] >= 1 << 20
                           else "%d KiB" % (c["size"] >> 10)) for c in caches))
    if meta.get("memory"):
        out.append("| memory | %s |" % meta["memory"])
    gpu = meta.get("gpu")
    if isinstance(gpu, dict):
        out.append("| GPU | %s |" % gpu.get("name", "?"))
        for key, label in (("driver", "driver"), ("cuda", "CUDA"), ("compute_cap", "compute capability"),
                           ("memory", "GPU memory"), ("clocks", "clocks"),
                           ("max_clocks", "max clocks"), ("power_limit", "power limit"),
                           ("l2", "L2"), ("sms", "multiprocessors")):
            if gpu.get(key):
                out.append("| %s | %s |" % (label, gpu[key]))
    else:
        out.append("| GPU | %s |" % (gpu or "none recorded (GPU rows: not measured)"))
    if meta.get("commit"):
        out.append("| commit | %s |" % meta["commit"])
    else:
        out.append("| commit | %s (at report time; machine.json did not record the run's) |"
                   % git_commit())
    peaks = []
    for key, unit in (("peak_gbs", "GB/s"), ("peak_tflops", "TFLOP/s")):
        vals = sorted({c.get(key) for _, c in contexts if c.get(key)})
        if vals:
            peaks.append("%s %s" % (" / ".join(vals), unit))
    if peaks:
        out.append("| nominal peaks (for %% of peak) | %s |" % ", ".join(peaks))
    # OpenBLAS's kernels for this CPU: its generic Prescott ones (a CPU model it does not know)
    # lower the host sgemm ceiling and the OpenBLAS variants alike. The benchmarks replace them at
    # start (kernels/common/blas_core.h) and say so here; runs from before that may show them.
    blas = sorted({c.get("host_blas") for _, c in contexts if c.get("host_blas")})
    if blas:
        out.append("| host BLAS | %s |" % " / ".join(blas))
    for fname, c in contexts:
        la = c.get("host_load_avg_1m")
        out.append("| %s | %s%s |" % (fname, c.get("date", "?"),
                                      ", load average (1 min) %s at the start" % la if la else ""))
    out.append("")
    if meta.get("commands"):
        out.append("Made with:\n\n```sh\n%s\n```\n" % "\n".join(meta["commands"]))
    if meta.get("notes"):
        out.append(meta["notes"] + "\n")
    return out


# ---- tables ----

COLUMNS = [
    # key, header, digits, present when any row has `key`
    ("us_per_token", "µs/token", 2),
    ("tokens_per_s", "tokens/s", 0),
    ("GB/s", "GB/s", 2),
    ("TFLOP/s", "TFLOP/s", 3),
    ("pct_ceiling", "% of BW ceiling", 1),
    ("pct_gather", "% of gather ceiling", 1),
    ("pct_compute", "% of compute ceiling", 1),
    ("pct_floor", "% of floor", 1),
    ("pct_peak", "% of peak BW", 2),
    ("pct_peak_tflops", "% of peak FLOP/s", 2),
]


def derived(row, ceil):
    """pct_ceiling, pct_gather, pct_compute, pct_floor for a row that lacks them (a peer), from
    the same device's ceilings; None where a count or a ceiling is missing."""
    t = ms(row.b) / 1e3
    gbs, gfl = row.get("GB/s"), gflops_of(row.b)
    out = {}
    bw, comp = ceil["bandwidth"], ceil["compute"]
    if gbs is not None and bw and bw.value:
        out["pct_ceiling"] = 100 * gbs / bw.value
    gather = ceil.get("gather")
    if gbs is not None and gather and gather.value:
        out["pct_gather"] = 100 * gbs / gather.value
    if gfl is not None and comp and comp.value:
        out["pct_compute"] = 100 * gfl / comp.value
    if gbs is not None and gfl is not None and bw and comp and bw.value and comp.value and t > 0:
        floor = max(gbs * t / bw.value, gfl * t / comp.value)
        out["pct_floor"] = 100 * floor / t
    return out


def peer_reference(peers, row):
    """The peer row that `row` is compared with: same op, base shape and device; for a backward,
    the same gradient form, else the sparse one (torch's cheapest), else any."""
    cands = [p for p in peers if p.op == row.op and p.base == row.base and p.device == row.device
             and not p.error]
    if not cands:
        return None
    for form in (row.form, "sparse", "", "compact", "dense"):
        for p in cands:
            if p.form == form:
                return p
    return cands[0]


def op_tables(rows, ceilings, gpu_backends, plots, outdir):
    out = []
    ours = [r for r in rows if not r.peer]
    peers = [r for r in rows if r.peer]
    groups = OrderedDict()
    for r in ours:
        groups.setdefault((r.op, r.base), []).append(r)
    for p in peers:  # a peer without our rows still gets its table
        groups.setdefault((p.op, p.base), [])
    summary = []
    for (op, base), mine in groups.items():
        theirs = [p for p in peers if p.op == op and p.base == base]
        allrows = mine + theirs
        files = {r.file for r in mine}
        ceil = {d: ceilings_for(ceilings, d, files) for d in ("host", "cuda")}
        present = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in allrows)]
        # Small shapes run far below a TFLOP/s: show GFLOP/s then.
        tflops = [r.get("TFLOP/s") for r in allrows if r.get("TFLOP/s") is not None]
        giga = bool(tflops) and max(tflops) < 1
        present = [("GFLOP/s", "GFLOP/s", 2) if giga and c[0] == "TFLOP/s" else c for c in present]
        derived_used = False
        header = ["variant", "backend", "time (ms)"] + [c[1] for c in present] + ["× PyTorch"]
        align = ["l", "l", "r"] + ["r"] * len(present) + ["r"]
        lines = []
        best = {}
        # The peer rows our rows are compared with: each of them is the 1.00x of its table.
        refs = {id(peer_reference(peers, r)) for r in mine if r.backend not in CORRECTNESS}
        for r in allrows:
            if r.error:
                lines.append([r.variant + (" (%s)" % r.form if r.form and not r.peer else ""),
                              r.backend, "skipped: " + r.error.replace("|", "/")]
                             + ["—"] * (len(present) + 1))
                continue
            d = {} if not r.peer else derived(r, ceil[r.device])
            cells = [r.variant + (" (%s)" % r.form if r.form and not r.peer else
                                  " (%s grad)" % r.form if r.form else ""),
                     r.backend, fmt(ms(r.b), 3 if ms(r.b) < 1 else 2)]
            for key, _, digits in present:
                v = gflops_of(r.b) if key == "GFLOP/s" else r.get(key)
                if v is None and key in d:
                    v, derived_used = d[key], True
                    cells.append(fmt(v, digits) + "*")
                else:
                    cells.append(fmt(v, digits))
            if r.peer:
                cells.append("1.00×" if id(r) in refs else "—")
            else:
                ref = peer_reference(peers, r) if r.backend not in CORRECTNESS else None
                cells.append(fmt(ms(ref.b) / ms(r.b), 2) + "×" if ref else "—")
                if r.backend not in CORRECTNESS:
                    k = r.device
                    if k not in best or ms(r.b) < ms(best[k].b):
                        best[k] = r
            lines.append(cells)
        seen = {r.backend for r in mine}
        for gpu in gpu_backends:
            if gpu not in seen:
                lines.append(["all %s variants" % gpu, gpu, "not measured"] + ["not measured" if
                             c[0] in ("GB/s", "TFLOP/s") else "—" for c in present] + ["—"])
        out.append("## %s — %s\n" % (op, base))
        out += table(header, align, lines)
        out.append("")
        if derived_used:
            out.append("\\* a peer's percentages are computed against the ceilings that the "
                       "project's benchmark measured on the same machine and device.\n")
        labels = sorted({r.get("label") for r in mine if r.get("label")})
        if labels:
            out.append("What bounds the floor (the runs' labels): %s.\n"
                       % "; ".join(l.replace("floor: ", "") for l in labels))
        for dev in ("host", "cuda"):
            pts = [r for r in allrows if r.device == dev and not r.error
                   and r.backend not in CORRECTNESS]
            if not pts:
                continue
            c = ceil[dev]
            name = "roofline_%s_%s_%s.svg" % (slug(op), dev, slug(base))
            status = plots.draw(os.path.join(outdir, name), "%s %s (%s)" % (op, base, dev), pts, c)
            if status is True:
                out.append("![roofline %s %s %s](%s)\n" % (op, base, dev, name))
            elif status:
                out.append("Roofline (%s): %s\n" % (dev, status))
        for dev, r in best.items():
            ref = peer_reference(peers, r)
            pct = r.get("pct_floor") if r.get("pct_floor") is not None else r.get("pct_ceiling")
            what = "floor" if r.get("pct_floor") is not None else "BW ceiling"
            summary.append([op, base, r.backend, r.variant, fmt(ms(r.b), 3 if ms(r.b) < 1 else 2),
                            ("%s%% of %s" % (fmt(pct), what)) if pct is not None else "—",
                            fmt(ms(ref.b) / ms(r.b), 2) + "×" if ref else "—"])
    head = []
    if summary:
        head.append("## Best variant per op, shape and backend\n")
        head += table(["op", "shape", "backend", "variant", "time (ms)", "vs the measured roof",
                       "× PyTorch"], ["l", "l", "l", "l", "r", "r", "r"], summary)
        head.append("")
    return head, out


def stage_floor_ms(stage, ceil):
    """max(bytes / bandwidth, flops / compute) in ms against the device's measured ceilings."""
    bw, comp = ceil["bandwidth"], ceil["compute"]
    b, f = stage.get("bytes"), stage.get("flops")
    if b is None or not bw or not bw.value:
        return None
    t = b / (bw.value * 1e9)
    if f and comp and comp.value:
        t = max(t, f / (comp.value * 1e9))
    return t * 1e3


def stage_sections(rows, stages, ceilings):
    """Where a composed op's time goes: per op and shape, its stages down, its runs across."""
    out, lines_by_run = [], []
    groups = OrderedDict()
    for s in stages:
        groups.setdefault((s.op, s.shape), OrderedDict()).setdefault(s.row, []).append(s)
    for (op, shape), runs in groups.items():
        # ours first, then the peers; each run's stages in the order it ran them
        order = sorted(runs, key=lambda r: (runs[r][0].peer, runs[r][0].backend in CORRECTNESS, r))
        order = [r for r in order if runs[r][0].backend not in CORRECTNESS]
        if not order:
            continue
        names = []
        for r in order:
            for s in runs[r]:
                if s.name not in names and s.name != "outside":
                    names.append(s.name)
        names.append("outside")
        layer = {r.b.get("run_name", r.b["name"]).split("/repeats:")[0].split("/manual_time")[0]: r
                 for r in rows}
        files = {runs[r][0].file for r in order if not runs[r][0].peer}
        ceil = {d: ceilings_for(ceilings, d, files) for d in ("host", "cuda")}
        declared = {}
        for r in order:
            for s in runs[r]:
                if s.get("bytes") is not None and s.name not in declared:
                    declared[s.name] = s
        header = ["stage", "MiB", "GFLOP", "floor (ms)"]
        for r in order:
            first = runs[r][0]
            who = "%s %s" % (first.backend, first.variant)
            header += ["%s ms" % who, "share", "% of floor"]
        lines = []
        for name in names:
            d = declared.get(name)
            cells = [name, fmt(d.get("bytes") / 2**20, 2) if d else "—",
                     fmt(d.get("flops") / 1e9, 3) if d and d.get("flops") else "—"]
            fl = stage_floor_ms(d, ceil[runs[order[0]][0].device]) if d else None
            cells.append(fmt(fl, 3) if fl is not None else "—")
            for r in order:
                s = next((x for x in runs[r] if x.name == name), None)
                if s is None or s.error:
                    cells += ["—", "—", "—"]
                    continue
                t = ms(s.b)
                own = stage_floor_ms(d, ceil[s.device]) if d else None
                cells += [fmt(t, 3 if abs(t) < 1 else 2),
                          fmt(s.get("pct_time")) + "%" if s.get("pct_time") is not None else "—",
                          fmt(100 * own / t) if own is not None and t > 0 else "—"]
            lines.append(cells)
        total = ["whole call", "", "", ""]
        for r in order:
            lr = layer.get(r)
            total += [fmt(ms(lr.b), 2) if lr else "—", "100%" if lr else "—", "—"]
        lines.append(total)
        out.append("## Where the time goes: %s — %s\n" % (op, shape))
        out += table(header, ["l", "r", "r", "r"] + ["r"] * (3 * len(order)), lines)
        out.append("")
        out.append("Stage times are medians over the run's repetitions (the layer row's own "
                   "median is the whole call); a stage's floor is max(its declared bytes / the "
                   "measured bandwidth ceiling, its declared flops / the measured compute "
                   "ceiling); `outside` is the call's time outside every stage.\n")
        for r in order:
            ranked = sorted((s for s in runs[r] if not s.error and s.get("pct_time") is not None),
                            key=lambda s: -s.get("pct_time"))
            first = runs[r][0]
            lines_by_run.append("- %s, %s %s: %s." % (
                op, first.backend, first.variant,
                ", ".join("%s %s%%" % (s.name, fmt(s.get("pct_time"))) for s in ranked[:3])))
    if lines_by_run:
        out.append("Largest stages per run (share of the call):\n")
        out += lines_by_run
        out.append("")
    return out


def ceilings_section(ceilings):
    if not ceilings:
        return ["## Ceilings\n", "No run in this folder measured a ceiling.\n"]
    out = ["## Ceilings measured in the same runs\n"]
    lines = []
    for c in ceilings:
        lines.append([c.device, c.what, c.kind,
                      fmt(ms(c.b), 3 if ms(c.b) < 1 else 2),
                      fmt(c.value, 2) + (" GFLOP/s" if c.compute else " GB/s")
                      + (" (%s TFLOP/s)" % fmt(c.value / 1e3, 2) if c.compute else ""), c.file])
    out += table(["device", "ceiling", "kind", "time (ms)", "measured", "run"],
                 ["l", "l", "l", "r", "r", "l"], lines)
    out.append("")
    return out


# ---- plots ----

class Plots:
    """Roofline SVGs through matplotlib (Agg), or the reason there are none."""

    def __init__(self, enabled, folder_arg):
        self.reason = None
        self.written = []
        self.plt = None
        if not enabled:
            self.reason = "skipped (--no-plots)"
            return
        try:
            import matplotlib
            matplotlib.use("Agg")
            matplotlib.rcParams["svg.hashsalt"] = "memlayers"  # stable ids: reproducible SVG
            import matplotlib.pyplot as plt
            self.plt = plt
        except Exception as e:  # ImportError, or a broken install
            self.reason = ("skipped: matplotlib is not importable by %s (%s); %s"
                           % (sys.executable, e.__class__.__name__, PLOT_HELP % folder_arg))

    def draw(self, path, title, rows, ceil):
        """True when written; else a string saying why not (None: nothing to say)."""
        if self.plt is None:
            return None  # said once, at the top
        pts = []
        for r in rows:
            gbs, gfl = r.get("GB/s"), gflops_of(r.b)
            if gbs and gfl:
                pts.append((gfl / gbs, gfl, r))
        if not pts:
            return "no row carries both flops and bytes"
        bw, comp = ceil["bandwidth"], ceil["compute"]
        if not bw:
            return "no bandwidth ceiling was measured for this device"
        plt = self.plt
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        xs = [p[0] for p in pts]
        knee = comp.value / bw.value if comp else None
        lo = min(xs + ([knee] if knee else [])) / 8
        hi = max(xs + ([knee] if knee else [])) * 8
        grid = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        roof = [min(bw.value * x, comp.value) if comp else bw.value * x for x in grid]
        # The roofs, named in the legend: the slanted one up to the knee, the flat one after it.
        slant = [x for x in grid if not knee or x <= knee] + ([knee] if knee else [])
        ax.loglog(slant, [bw.value * x for x in slant], color="0.2", linewidth=1.6,
                  label="measured bandwidth ceiling %.1f GB/s (%s)" % (bw.value, bw.what))
        if comp:
            flat = [knee] + [x for x in grid if x > knee]
            ax.loglog(flat, [comp.value] * len(flat), color="tab:orange", linewidth=1.6,
                      label="measured compute ceiling %.4g GFLOP/s (%s)" % (comp.value, comp.what))
        # Labels of points with about the same intensity are spread vertically.
        for i, (x, y, r) in enumerate(sorted(pts, key=lambda p: (round(math.log10(p[0]), 1), p[1]))):
            if r.peer:
                ax.plot([x], [y], marker="s", markersize=7, color="tab:red", linestyle="none")
            else:
                ax.plot([x], [y], marker="o", markersize=6, color="tab:blue", linestyle="none")
            label = ("%s %s" % (r.backend, r.variant) if r.peer else r.variant) + (
                " (%s)" % r.form if r.form else "")
            ax.annotate(label, (x, y), textcoords="offset points", fontsize=7,
                        xytext=(7, -3 + 8 * ((i % 3) - 1)))
        ax.plot([], [], marker="o", color="tab:blue", linestyle="none", label="memlayers variants")
        if any(p[2].peer for p in pts):
            ax.plot([], [], marker="s", color="tab:red", linestyle="none", label="PyTorch peer")
        ymin = min(min(p[1] for p in pts), min(roof)) / 4
        ymax = max(max(roof), max(p[1] for p in pts)) * 3
        ax.set_ylim(ymin, ymax)
        ax.set_xlim(lo, hi)
        ax.set_xlabel("arithmetic intensity (declared FLOP / declared byte)")
        ax.set_ylabel("achieved GFLOP/s")
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", linewidth=0.3, alpha=0.5)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(path, format="svg", metadata={"Date": None})
        plt.close(fig)
        self.written.append(os.path.basename(path))
        return True


def maybe_reexec_for_matplotlib():
    """Rerun this script under an interpreter that has matplotlib when this one has not."""
    try:
        import matplotlib  # noqa: F401
        return
    except Exception:
        pass
    if os.environ.get("MEMLAYERS_REPORT_REEXEC"):
        return
    other = os.environ.get("MEMLAYERS_PLOT_PYTHON", "/usr/bin/python3")
    if not other or other == "none" or not os.path.exists(other):
        return
    if os.path.realpath(other) == os.path.realpath(sys.executable):
        return
    try:
        ok = subprocess.run([other, "-c", "import matplotlib"], capture_output=True,
                            timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    if ok:
        env = dict(os.environ, MEMLAYERS_REPORT_REEXEC="1")
        os.execve(other, [other, os.path.abspath(__file__)] + sys.argv[1:], env)


# ---- main ----

def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="reports/<machine>: holds the JSON (and machine.json)")
    ap.add_argument("--out", help="write README.md and the plots here (default: the folder)")
    ap.add_argument("--gpu-backends", default="cuda",
                    help="comma-separated backends listed as 'not measured' when absent")
    ap.add_argument("--no-plots", action="store_true", help="markdown only")
    args = ap.parse_args()
    if not args.no_plots:
        maybe_reexec_for_matplotlib()

    if not os.path.isdir(args.folder):
        sys.exit("report: %s is not a folder" % args.folder)
    outdir = args.out or args.folder
    os.makedirs(outdir, exist_ok=True)
    runs = load_runs(args.folder)
    meta_path = os.path.join(args.folder, "machine.json")
    meta = {}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    rows, ceilings, contexts, stages = collect(runs)
    plots = Plots(not args.no_plots, args.folder)

    title = meta.get("title", os.path.basename(os.path.normpath(args.folder)))
    out = ["# memlayers report: %s\n" % title,
           "Generated by `tools/report.py %s` from the JSON beside this file; do not edit. "
           "Each row is the median of its run's repetitions; bytes and flops are the ops' "
           "declared counts (DESIGN.md §5).\n" % args.folder]
    out += machine_section(meta, contexts, args.folder)
    out += ceilings_section(ceilings)
    head, body = op_tables(rows, ceilings, [g for g in args.gpu_backends.split(",") if g],
                           plots, outdir)
    if plots.reason:
        body.insert(0, "Roofline plots %s.\n" % plots.reason)
    elif plots.written:
        body.insert(0, "Roofline plots: x = declared flops / declared bytes, y = achieved "
                       "GFLOP/s, log-log; roofs are the ceilings measured in the same run "
                       "(circles: memlayers variants, squares: PyTorch).\n")
    out += head + body
    out += stage_sections(rows, stages, ceilings)
    notes = os.path.join(args.folder, "notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            out += ["## Notes\n", f.read().strip() + "\n"]
    if plots.plt is not None:  # drop plots of rows that no longer exist
        for f in os.listdir(outdir):
            if f.startswith("roofline_") and f.endswith(".svg") and f not in plots.written:
                os.remove(os.path.join(outdir, f))
    text = "\n".join(out).rstrip() + "\n"
    path = os.path.join(outdir, "README.md")
    with open(path, "w") as f:
        f.write(text)
    print("report: wrote %s%s" % (path, " and %d plot(s)" % len(plots.written)
                                   if plots.written else " (plots %s)" % plots.reason
                                   if plots.reason else ""))


if __name__ == "__main__":
    main()
