#!/usr/bin/env python3
"""Tests of the report and profiling tools, on saved fixtures (fixtures/README.md says what they
are), and of the peers' shared torch set-up. Run by ctest (label "tools"), or by hand:

    python3 tests/tools/tools_test.py                      # everything but the dry run
    python3 tests/tools/tools_test.py DeviceCheckDryRun --build-dir build/release
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIX = os.path.join(HERE, "fixtures")
BUILD_DIR = None


def run(cmd, env=None, check=True):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError("%s exited %d\nstdout:\n%s\nstderr:\n%s"
                             % (" ".join(cmd), p.returncode, p.stdout, p.stderr))
    return p


def read(path):
    with open(path) as f:
        return f.read()


def has_matplotlib():
    """Whether report.py will draw: its own interpreter's matplotlib or the fallback's."""
    for py in (sys.executable, os.environ.get("MEMLAYERS_PLOT_PYTHON", "/usr/bin/python3")):
        if py and py != "none" and os.path.exists(py) and subprocess.run(
                [py, "-c", "import matplotlib"], capture_output=True).returncode == 0:
            return True
    return False


def section(text, heading):
    """The lines of a markdown section, from its '## heading' to the next '## '."""
    m = re.search(r"^## %s\b.*?(?=^## |\Z)" % re.escape(heading), text, re.M | re.S)
    if not m:
        raise AssertionError("no section '## %s' in:\n%s" % (heading, text))
    return m.group(0)


def row(text, first_cell):
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError("no row '%s' in:\n%s" % (first_cell, text))


class Report(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="report_test_")
        cls.out = os.path.join(cls.tmp, "out")
        cls.proc = run([sys.executable, os.path.join(ROOT, "tools", "report.py"),
                        os.path.join(FIX, "report"), "--out", cls.out])
        cls.md = read(os.path.join(cls.out, "README.md"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_other_tools_json_is_skipped(self):
        # sharded_embbag_p1.json (sharded_bench.py's record) sits beside the runs, as in a
        # machine's folder: named as skipped, and the page still written from the rest
        self.assertIn("skipping", self.proc.stderr)
        self.assertIn("sharded_embbag_p1.json", self.proc.stderr)
        self.assertIn("## Best variant per op", self.md)

    def test_machine_and_ceilings(self):
        m = section(self.md, "Machine")
        self.assertIn("AMD EPYC (fixture)", m)
        self.assertIn("avx2", row(m, "CPU features")[1])
        self.assertIn("fixture000000", m)
        c = section(self.md, "Ceilings measured in the same runs")
        self.assertRegex(c, r"stream_read_2\.00 GiB \| bandwidth \|.*32\.31 GB/s")
        self.assertRegex(c, r"sgemm_64x100x19 \| compute \|.*20\.00 GFLOP/s")
        self.assertRegex(c, r"gather_4096B_rows \| gather \|.*25\.00 GB/s")

    def test_embbag_tables_and_pytorch_column(self):
        fwd = section(self.md, "embbag_fwd")
        header = row(fwd, "variant")
        self.assertEqual(header[-1], "× PyTorch")
        self.assertIn("% of BW ceiling", header)
        v2 = row(fwd, "v2_hwy_threads")
        self.assertEqual(v2[header.index("× PyTorch")], "1.06×")  # 24.31 ms / 22.95 ms
        self.assertEqual(v2[header.index("% of BW ceiling")], "72.6")
        self.assertEqual(v2[header.index("% of gather ceiling")], "96.8")  # the bench's counter
        # The peer's percentages, derived: the gather row comes first in the file, yet the
        # bandwidth roof stays the streaming read (32.31 GB/s); the gather column uses 25 GB/s.
        peer = row(fwd, "embedding_bag")
        gbs = float(peer[header.index("GB/s")])
        self.assertAlmostEqual(float(peer[header.index("% of BW ceiling")].rstrip("*")),
                               100 * gbs / 32.31, delta=0.1)
        self.assertAlmostEqual(float(peer[header.index("% of gather ceiling")].rstrip("*")),
                               100 * gbs / 25.0, delta=0.1)
        self.assertEqual(row(fwd, "embedding_bag")[-1], "1.00×")
        self.assertIn("not measured", row(fwd, "all cuda variants"))
        bwd = section(self.md, "embbag_bwd")
        h = row(bwd, "variant")
        # compact dV against torch's sparse gradient: 272.43 ms / 51.64 ms
        self.assertEqual(row(bwd, "v2_bwd_sorted (compact)")[h.index("× PyTorch")], "5.28×")
        self.assertEqual(row(bwd, "embedding_bag (sparse grad)")[-1], "1.00×")
        self.assertEqual(row(bwd, "embedding_bag (dense grad)")[-1], "—")
        # the mean row in the fixture is not the record
        self.assertEqual(row(fwd, "v1_scalar")[h.index("time (ms)")], "93.56")

    def test_pk_topk_compute_columns_floor_and_skips(self):
        fwd = section(self.md, "pk_topk_fwd")
        h = row(fwd, "variant")
        for col in ("GFLOP/s", "% of compute ceiling", "% of floor", "% of peak FLOP/s"):
            self.assertIn(col, h)
        v2 = row(fwd, "v2_fused_pruned")
        self.assertEqual(v2[h.index("% of floor")], "60.8")
        self.assertEqual(v2[h.index("× PyTorch")], "8.62×")  # 0.690 / 0.080
        self.assertTrue(row(fwd, "einsum_topk")[h.index("% of floor")].endswith("*"))
        self.assertIn("compute", fwd)  # what bounds the floor
        bwd = section(self.md, "pk_topk_bwd")
        skipped = row(bwd, "v2_fused_pruned")
        self.assertTrue(skipped[2].startswith("skipped: unsupported"))
        self.assertIn("not measured", row(bwd, "all cuda variants"))

    def test_memory_layer_rows_and_stage_breakdown(self):
        fwd = section(self.md, "memory_layer_fwd")
        h = row(fwd, "variant")
        for col in ("µs/token", "tokens/s", "% of floor", "× PyTorch"):
            self.assertIn(col, h)
        ours = row(fwd, "v1_compose")
        peer = row(fwd, "eager")
        self.assertEqual(peer[-1], "1.00×")
        times = {}
        for name in ("bench_memory_layer_cpu.json", "memory_layer_torch_cpu.json"):
            with open(os.path.join(FIX, "report", name)) as f:
                for b in json.load(f)["benchmarks"]:
                    if b.get("aggregate_name") == "median" and "memory_layer_fwd/" in b["name"]:
                        times[name] = b["real_time"]
        self.assertEqual(ours[h.index("× PyTorch")], "%.2f×" % (
            times["memory_layer_torch_cpu.json"] / times["bench_memory_layer_cpu.json"]))
        self.assertNotIn("stage:", self.md)  # stage rows live in their own section only

        bd = section(self.md, "Where the time goes: memory_layer_fwd_bwd")
        header = row(bd, "stage")
        self.assertIn("cpu v1_compose ms", header)
        self.assertIn("torch_cpu autograd ms", header)
        names = [row(bd, n)[0] for n in ("projection", "search", "softmax", "bag", "gating",
                                         "gating_bwd", "bag_bwd", "softmax_bwd", "search_bwd",
                                         "projection_bwd", "outside", "whole call")]
        self.assertEqual(len(names), 12)
        # The % of floor of a stage, recomputed here from the fixture's JSON: the stage's declared
        # bytes and flops against the ceilings the bench measured in the same run.
        with open(os.path.join(FIX, "report", "bench_memory_layer_cpu.json")) as f:
            doc = json.load(f)
        med = {b["name"]: b for b in doc["benchmarks"]
               if b.get("aggregate_name") == "median" and b["name"].startswith("ceiling/")}
        bw = next(b["GB/s"] for n, b in med.items() if "stream_read" in n)
        gflops = next(b["TFLOP/s"] * 1e3 for n, b in med.items() if "sgemm" in n)
        st = next(b for b in doc["benchmarks"]
                  if "memory_layer_fwd_bwd/" in b["name"] and "/stage:search_bwd/" in b["name"])
        floor_ms = max(st["bytes"] / bw / 1e9, st["flops"] / gflops / 1e9) * 1e3
        cells = row(bd, "search_bwd")
        i = header.index("cpu v1_compose ms")
        self.assertEqual(cells[i + 2], "%.1f" % (100 * floor_ms / st["real_time"]))
        self.assertEqual(cells[i + 1], "%.1f%%" % st["pct_time"])
        self.assertEqual(cells[header.index("floor (ms)")], "%.3f" % floor_ms)
        # each run's three largest stages, in one line
        self.assertRegex(self.md, r"- memory_layer_fwd_bwd, cpu v1_compose: [a-z_]+ [0-9.]+%, ")
        self.assertRegex(self.md, r"- memory_layer_fwd, torch_cpu eager: [a-z_]+ [0-9.]+%, ")

    def test_notes_are_included(self):
        notes = section(self.md, "Notes")
        self.assertIn("fixture note: notes.md is copied verbatim", notes)

    def test_summary(self):
        s = section(self.md, "Best variant per op, shape and backend")
        self.assertRegex(s, r"\| pk_topk_fwd \|[^\n]*\| v2_fused_pruned \|[^\n]*60\.8% of floor")
        self.assertRegex(s, r"\| embbag_fwd \|[^\n]*\| v2_hwy_threads \|[^\n]*72\.6% of BW ceiling")

    def test_plots(self):
        svgs = sorted(f for f in os.listdir(self.out) if f.endswith(".svg"))
        if not has_matplotlib():
            self.assertEqual(svgs, [])
            self.assertIn("Roofline plots skipped", self.md)
            self.skipTest("matplotlib not installed: the skip message was checked instead")
        self.assertEqual(len(svgs), 6, svgs)  # embbag, pk_topk, memory_layer: fwd and bwd each
        for f in svgs:
            self.assertIn("](%s)" % f, self.md)  # linked from the README
            root = ET.parse(os.path.join(self.out, f)).getroot()
            self.assertTrue(root.tag.endswith("svg"))
            text = read(os.path.join(self.out, f))
            self.assertIn("measured bandwidth ceiling", text)
        pk = read(os.path.join(self.out, [f for f in svgs if "pk_topk_fwd" in f][0]))
        self.assertIn("measured compute ceiling", pk)
        self.assertIn("v2_fused_pruned", pk)
        self.assertIn("einsum_topk", pk)

    def test_without_matplotlib_the_markdown_says_how(self):
        out = os.path.join(self.tmp, "noplot")
        env = dict(os.environ, MEMLAYERS_PLOT_PYTHON="none")
        # -S: no site-packages, so no matplotlib, whatever this machine has installed
        run([sys.executable, "-S", os.path.join(ROOT, "tools", "report.py"),
             os.path.join(FIX, "report"), "--out", out], env=env)
        md = read(os.path.join(out, "README.md"))
        self.assertIn("Roofline plots skipped: matplotlib is not importable", md)
        self.assertIn("python3-matplotlib", md)
        self.assertIn("## pk_topk_fwd", md)
        self.assertFalse([f for f in os.listdir(out) if f.endswith(".svg")])

    def test_errors_name_the_problem(self):
        empty = os.path.join(self.tmp, "empty")
        os.makedirs(empty, exist_ok=True)
        p = run([sys.executable, os.path.join(ROOT, "tools", "report.py"), empty], check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("no benchmark *.json", p.stderr)
        bad = os.path.join(self.tmp, "bad")
        os.makedirs(bad, exist_ok=True)
        with open(os.path.join(bad, "x.json"), "w") as f:
            json.dump({"not": "a benchmark"}, f)
        p = run([sys.executable, os.path.join(ROOT, "tools", "report.py"), bad], check=False)
        self.assertNotEqual(p.returncode, 0)  # skipped, so no run is left
        self.assertIn("no 'benchmarks' list", p.stderr)
        self.assertIn("no benchmark *.json", p.stderr)


class PeerCommon(unittest.TestCase):
    """tools/peers/peer_common.py: on the CPU torch's allocator is put on huge pages (or kept off
    with --no-thp) before torch loads. Run with `import torch` made to fail, so torch need not be
    installed and is never loaded."""

    def env_after_import(self, device, thp):
        code = ("import os, sys; sys.path.insert(0, %r); sys.modules['torch'] = None; "
                "os.environ.pop('THP_MEM_ALLOC_ENABLE', None); import peer_common; "
                "assert peer_common.import_torch('t', %r, 0, thp=%r) is None; "
                "print(os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset'))"
                % (os.path.join(ROOT, "tools", "peers"), device, thp))
        p = run([sys.executable, "-c", code])
        self.assertIn("torch is not installed", p.stderr)
        return p.stdout.strip()

    def test_cpu_gets_huge_pages_unless_told_not_to(self):
        self.assertEqual(self.env_after_import("cpu", True), "1")
        self.assertEqual(self.env_after_import("cpu", False), "0")

    def test_cuda_leaves_the_setting_alone(self):
        self.assertEqual(self.env_after_import("cuda", True), "unset")


class NcuSummary(unittest.TestCase):
    def summary(self, name):
        p = run([sys.executable, os.path.join(ROOT, "profiles", "ncu_summary.py"),
                 os.path.join(FIX, name), "--title", "t"])
        return p.stdout

    def test_raw_page(self):
        md = self.summary("ncu_raw.csv")
        v4 = row(md, "`void embbag_fwd_v4<float, long>(memlayers::embbag::FwdPar...`")
        # two launches averaged: duration 275 us, DRAM 85 %, occupancy 65 %, L2 hit 11 %
        self.assertEqual(v4[1:10], ["2", "275.00", "85.0", "87.5", "21.0", "65.0", "100.0",
                                    "11.0", "4033.8"])
        self.assertTrue(v4[11].startswith("long_scoreboard 25.00 (83%)"), v4[11])
        self.assertNotIn("selected", v4[11])
        self.assertEqual(v4[12], "16.0 / 16.0")  # global sectors per load, per store request
        sort = row(md, "`void cub::DeviceRadixSortOnesweepKernel<...>(...)`")
        self.assertEqual(sort[8], "—")  # n/a
        self.assertTrue(sort[11].startswith("wait"))
        self.assertEqual(sort[12], "4.0 / —")

    def test_details_page(self):
        md = self.summary("ncu_details.csv")
        r = row(md, "`pk_topk_fwd_v2(memlayers::pk_topk::FwdParams)`")
        self.assertEqual(r[2], "1250.00")  # 1.25 msecond
        self.assertEqual(r[3], "35.2")
        self.assertEqual(r[6], "45.6")
        self.assertEqual(r[8], "88.1")
        self.assertEqual(r[11], "not in this export")
        self.assertEqual(r[12], "— / —")

    def test_simt_counts_appended(self):
        p = run([sys.executable, os.path.join(ROOT, "profiles", "ncu_summary.py"),
                 os.path.join(FIX, "ncu_raw.csv"), "--simt-access",
                 os.path.join(FIX, "simt_access.md"), "--op", "embbag_fwd", "--variant",
                 "v4_persistent_stream", "--dtype", "bf16"])
        tail = p.stdout.split("### simt's count for embbag_fwd/v4_persistent_stream, bf16")[1]
        self.assertIn("| v4_persistent_stream | `k4` | load | `a.cuh:2:3` | 64 | 16.00 | 100.0% |",
                      tail)
        self.assertNotIn("`k4f`", tail)  # the fp32 section's row
        self.assertNotIn("v2_warp_per_bag", tail)
        p = run([sys.executable, os.path.join(ROOT, "profiles", "ncu_summary.py"),
                 os.path.join(FIX, "ncu_raw.csv"), "--simt-access",
                 os.path.join(FIX, "simt_access.md"), "--op", "pk_topk_fwd", "--variant", "v9"])
        self.assertIn("No rows for this variant in that section.", p.stdout)

    def test_not_a_csv(self):
        p = run([sys.executable, os.path.join(ROOT, "profiles", "ncu_summary.py"),
                 os.path.join(FIX, "report", "machine.json")], check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("no ncu CSV header", p.stderr)


class SimtAccessReport(unittest.TestCase):
    """tools/simt_access_report.py runs every simt variant of the four ops through the build's
    memlayers CLI and tabulates simt's sector counts."""

    def test_every_op_and_dtype_tabulated(self):
        if not BUILD_DIR:
            self.skipTest("needs --build-dir")
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "access.md")
            run([sys.executable, os.path.join(ROOT, "tools", "simt_access_report.py"), "--cli",
                 os.path.join(BUILD_DIR, "tools", "cli", "memlayers"), "--out", out])
            with open(out) as f:
                md = f.read()
        for op in ("embbag_fwd", "embbag_bwd", "pk_topk_fwd", "pk_topk_bwd"):
            for dtype in ("fp32", "bf16"):
                self.assertIn("## %s, %s" % (op, dtype), md)
        # v2's rows at dim 1024 fp32: 32 lanes' 16 bytes, one 512-byte span a request, all used.
        self.assertRegex(md, r"\| v2_warp_per_bag \| `embbag_fwd_v2_warp_per_bag` \| load \| "
                             r"`kernels/embbag/cuda/common.cuh:\d+:\d+` \| \d+ \| 16.00 \| 100.0% \|")
        # The requests that fetch unused bytes: the bf16 forwards' widened fp32 stores, and those
        # the kernel source declares partial (v2_bwd_merged's staged run entries).
        waste = md.split("## Requests that fetch bytes nobody asked for")[1]
        listed = [l for l in waste.splitlines() if l.startswith("- ")]
        self.assertTrue(any("(declared: a gather" in l for l in listed), waste)
        for l in listed:
            if "(declared: " not in l:
                self.assertRegex(l, r"^- embbag_fwd/v[234]_\w+ bf16 store ")
        self.assertIn("The bf16 forwards' stores", waste)


class DeviceCheckDryRun(unittest.TestCase):
    """The dry run lists every step and finds the binaries of the build the tests run in; a
    machine without a GPU is reported, not a failure."""

    def dry(self, *args):
        env = dict(os.environ)
        env.pop("OUT", None)
        return run(["bash", os.path.join(ROOT, "tools", "device_check.sh"), "--dry-run"]
                   + list(args), env=env, check=False)

    def test_lists_steps_and_finds_binaries(self):
        if not BUILD_DIR:
            self.skipTest("--build-dir not given")
        p = self.dry("--build-dir", BUILD_DIR)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        for step in ("facts", "build", "test_embbag", "memcheck_embbag", "racecheck_embbag",
                     "bench_embbag_default", "bench_embbag_paper", "peer_embbag_default",
                     "ncu_", "train", "report"):
            self.assertRegex(p.stdout, r"(?m)^  %s" % step)
        if os.path.isfile(os.path.join(ROOT, "bench", "pk_topk", "CMakeLists.txt")):
            self.assertRegex(p.stdout, r"(?m)^  bench_pk_topk_default .*/bench_pk_topk ")
        self.assertRegex(p.stdout, r"(?m)^found: memlayers bench_embbag")
        self.assertNotIn("MISSING", p.stdout)
        self.assertTrue(re.search(r"(?m)^(missing on this machine|GPU tools present)", p.stdout))

    def test_packed_bundle(self):
        """--bundle packs the build into DIR.tar.gz; --prebuilt takes that archive as it takes
        the folder (unpacked into a temporary folder, removed at the end)."""
        if not BUILD_DIR:
            self.skipTest("--build-dir not given")
        work = tempfile.mkdtemp(prefix="bundle_")
        try:
            bundle = os.path.join(work, "bundle")
            p = run(["bash", os.path.join(ROOT, "tools", "device_check.sh"), "--bundle", bundle,
                     "--build-dir", BUILD_DIR], check=False)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertTrue(os.path.isfile(bundle + ".tar.gz"))
            shutil.rmtree(bundle)  # only the archive travels
            p = self.dry("--prebuilt", bundle + ".tar.gz")
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertRegex(p.stdout, r"(?m)^found: memlayers bench_embbag")
            self.assertNotIn("MISSING", p.stdout)
            p = self.dry("--prebuilt", os.path.join(ROOT, "README.md"))
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("a folder or a .tar.gz from --bundle is accepted", p.stderr)
        finally:
            shutil.rmtree(work)

    def test_missing_binaries_fail(self):
        empty = tempfile.mkdtemp(prefix="prebuilt_")
        try:
            p = self.dry("--prebuilt", empty)
        finally:
            shutil.rmtree(empty)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("MISSING binaries", p.stdout)
        self.assertIn("bench_embbag", p.stdout)


if __name__ == "__main__":
    if "--build-dir" in sys.argv:
        i = sys.argv.index("--build-dir")
        BUILD_DIR = os.path.abspath(sys.argv[i + 1])
        del sys.argv[i:i + 2]
    unittest.main()
