"""What the PyTorch peers (embbag_torch.py, pk_topk_torch.py) share: importing torch (or the skip
code), the timer and the rotation of input sets, the aggregate row and the JSON file in Google
Benchmark's layout, the machine's load average and byte sizes as the bench binaries print them.
Imported by the peers as a sibling module (they run as scripts, so their folder is on sys.path).
"""
import datetime
import json
import os
import socket
import statistics
import sys
import time

SKIP = 77  # ctest's skip code (SKIP_RETURN_CODE in tools/peers/CMakeLists.txt)


# ---- torch ----

def import_torch(prog, device, threads, thp=True):
    """torch, set to `threads` CPU threads when > 0; None after saying why on stderr when torch is
    missing or sees no GPU for --device cuda (the caller returns SKIP). On the CPU, `thp` has
    torch's allocator advise its buffers of 2 MiB or more onto transparent huge pages
    (THP_MEM_ALLOC_ENABLE, read once when torch loads), as memlayers' host allocator does for its
    tables: a gather of random rows otherwise pays a TLB miss per row that the suite's does not."""
    if device == "cpu":
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1" if thp else "0"
    try:
        import torch
    except ImportError:
        print(f"{prog}: torch is not installed (pip install -r tools/requirements-peers.txt)",
              file=sys.stderr)
        return None
    if device == "cuda" and not torch.cuda.is_available():
        print(f"{prog}: --device cuda but torch sees no GPU", file=sys.stderr)
        return None
    if threads > 0:
        torch.set_num_threads(threads)
    return torch


def add_run_args(p, sets_help):
    """--reps, --sets, --seed, --threads, --peak-gbs, as both peers take them."""
    p.add_argument("--reps", type=int, default=10, help="timed calls; the median is reported")
    p.add_argument("--sets", type=int, default=4, help=sets_help)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--peak-gbs", type=float, default=3350, help="nominal peak for pct_peak (H100)")
    p.add_argument("--no-thp", action="store_true",
                   help="on the CPU, leave torch's buffers off transparent huge pages (by default "
                        "they are advised onto them, as memlayers' tables are)")


def torch_dtypes(torch, dtype, index):
    """(data dtype, index dtype, bytes per element, bytes per index) for --dtype and --index."""
    return ({"fp32": torch.float32, "bf16": torch.bfloat16}[dtype],
            {"int32": torch.int32, "int64": torch.int64}[index],
            4 if dtype == "fp32" else 2, 4 if index == "int32" else 8)


def torch_line(torch, device):
    """The configuration block's torch line."""
    thp = f", THP_MEM_ALLOC_ENABLE {thp_setting()}" if device == "cpu" else ""
    return (f"  torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}"
            f"{thp}, load average {load_average()}")


def thp_setting():
    """"1" when torch's CPU allocator advises large buffers onto huge pages, else "0"."""
    return os.environ.get("THP_MEM_ALLOC_ENABLE", "0")


# ---- machine ----

def load_average():
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return ""


def human_bytes(b):
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    u = 0
    while b >= 1024 and u < 4:
        b /= 1024
        u += 1
    return f"{b:.0f} B" if u == 0 else f"{b:.2f} {units[u]}"


# ---- timing ----

def timer(torch, device):
    """Returns time_call(fn) -> seconds: CUDA events on the GPU, perf_counter on the host."""
    if device == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)

        def time_call(fn):
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
    else:
        def time_call(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    return time_call


def measure(time_call, calls, reps, warmup=2):
    """Seconds of each of `reps` calls after warm-up, rotating through `calls` (one per set)."""
    for i in range(warmup):
        calls[i % len(calls)]()
    return [time_call(calls[i % len(calls)]) for i in range(reps)]


# ---- the record ----

def aggregate_row(name, times, reps, bytes_per_call, columns, extra=None):
    """One row as Google Benchmark writes a median aggregate with --reps > 1. `columns(median
    seconds)` gives the row's own counters (GB/s, ...), placed after bytes_per_second; `extra` is
    added last."""
    med = statistics.median(times)
    r = {
        "name": name + f"/repeats:{reps}/manual_time_median",
        "family_index": 0,
        "per_family_instance_index": 0,
        "run_name": name + f"/repeats:{reps}/manual_time",
        "run_type": "aggregate",
        "repetitions": reps,
        "threads": 1,
        "aggregate_name": "median",
        "aggregate_unit": "time",
        "iterations": reps,
        "real_time": med * 1e3,
        "cpu_time": med * 1e3,
        "time_unit": "ms",
        "bytes_per_second": bytes_per_call / med,
    }
    r.update(columns(med))
    r["min_time_ms"] = min(times) * 1e3
    r["max_time_ms"] = max(times) * 1e3
    if extra:
        r.update(extra)
    return r


def write_json(path, executable, torch, device, context, rows):
    """The Google-Benchmark-style JSON: the machine's and torch's context, then `context` (the
    op's keys, in order), then host_load_avg_1m; `rows` as "benchmarks"."""
    doc = {
        "context": {
            "date": datetime.datetime.now().astimezone().isoformat(),
            "host_name": socket.gethostname(),
            "executable": executable,
            "num_cpus": os.cpu_count(),
            "library_build_type": "release",
            "peer": f"torch {torch.__version__}",
            "device": device if device == "cpu" else torch.cuda.get_device_name(0),
            "threads": str(torch.get_num_threads()),
            **({"torch_thp_mem_alloc": thp_setting()} if device == "cpu" else {}),
            **context,
            "host_load_avg_1m": load_average(),
        },
        "benchmarks": rows,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"wrote {path}")
