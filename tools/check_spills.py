#!/usr/bin/env python3
"""Fails when any CUDA kernel spills registers or uses local memory.

Reads the ptxas report (`-Xptxas=-v`, which every kernel target compiles with) from a build log,
writes a per-kernel table next to it, and exits 1 on any spill store/load or non-zero stack frame.

    cmake --build build/release 2>&1 | tee -a build/release/ptxas-build.log
    tools/check_spills.py build/release/ptxas-build.log --report build/release/ptxas-report.txt
"""
import argparse
import re
import shutil
import subprocess
import sys

FUNC = re.compile(r"ptxas info\s*: (?:Compiling entry function|Function properties for) '?([\w$]+)'?")
PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"ptxas info\s*: Used (\d+) registers")
WARN = re.compile(r"ptxas warning\s*:.*(spill|local memory)", re.IGNORECASE)


def demangle(names):
    if not names or not shutil.which("c++filt"):
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log", help="build log holding the ptxas -v output")
    ap.add_argument("--report", help="where to write the per-kernel table")
    ap.add_argument("--expect-kernels", action="store_true",
                    help="fail when the log holds no ptxas report at all (CUDA build from clean)")
    args = ap.parse_args()

    kernels = {}  # name -> [stack, spill stores, spill loads, registers]
    warnings = []
    current = None
    with open(args.log, errors="replace") as f:
        for line in f:
            m = FUNC.search(line)
            if m:
                # The log may hold several builds (it is appended to): the last report counts.
                current = m.group(1)
                if "Compiling entry function" in line or current not in kernels:
                    kernels[current] = [0, 0, 0, 0]
                continue
            m = PROPS.search(line)
            if m and current:
                stack, st, ld = map(int, m.groups())
                kernels[current][:3] = [stack, st, ld]
                continue
            m = USED.search(line)
            if m and current:
                kernels[current][3] = int(m.group(1))
                continue
            if WARN.search(line):
                warnings.append(line.strip())

    if not kernels:
        msg = "check_spills: no ptxas report in %s" % args.log
        if args.expect_kernels:
            print(msg + ": build the CUDA targets from clean with this log captured", file=sys.stderr)
            return 1
        print(msg + " (no CUDA objects were compiled)")
        return 0

    names = demangle(sorted(kernels))
    bad = {n: v for n, v in kernels.items() if v[0] or v[1] or v[2]}
    lines = ["%-8s %-6s %-7s %-7s  %s" % ("regs", "stack", "spill-st", "spill-ld", "function")]
    for n in sorted(kernels, key=lambda n: names[n]):
        s, st, ld, regs = kernels[n]
        lines.append("%-8d %-6d %-8d %-8d  %s%s" % (regs, s, st, ld, names[n], "   <-- local memory" if n in bad else ""))
    table = "\n".join(lines) + "\n"
    if args.report:
        with open(args.report, "w") as f:
            f.write(table)
    print("check_spills: %d functions compiled for the GPU, %d with spills or local memory"
          % (len(kernels), len(bad)))
    for w in warnings:
        print("  " + w)
    if bad or warnings:
        print(table)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
