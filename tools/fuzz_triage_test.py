#!/usr/bin/env python3
"""Unit tests of tools/fuzz_triage.py (ctest: triage.fuzz_triage_test).

The findings are synthetic: artifact files laid out as ci/fuzz leaves them
(fuzz-artifacts/NAME/KIND-HASH), with replay logs in the format of
anyctx-repro --runs 1 and a libFuzzer log in the format libFuzzer writes.
"""

import io
import json
import os
import stat
import sys
import tempfile
import textwrap
import unittest
from contextlib import redirect_stdout

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzz_triage  # noqa: E402


def replay_log(program_cpus, report_lines, how="signal 6"):
    """What anyctx-repro --runs 1 prints for a failing program."""
    program = ["# anyctx program v2", "target page_smp"]
    for c in range(program_cpus):
        program += ["cpu %d" % c, "  alloc_pages nolock order=0 slot=%d" % c]
    return ("program (target page_smp):\n" + "\n".join(program) + "\n\n"
            "run 1/1: FAILED (%s)\nhit rate: 1/1 runs failed\nfirst failure's output:\n" % how
            + "".join(line + "\n" for line in report_lines)
            + "oracle: whatever\nstep:   whatever\n")


CLEAN_REPLAY = ("program (target slab_ops):\n# anyctx program v2\ntarget slab_ops\ncpu 0\n  kmalloc size=3 slot=0\n\n"
                "run 1/1: ok\nhit rate: 0/1 runs failed\n")


def deadlock(address, op_a, op_b, event):
    return [
        "anyctx: self-deadlock: cpu 0 (nmi) spins on spinlock 'zone.lock' (%s) at "
        "/home/ci/anyctx/src/anyctx/page/page_alloc.cc:412, which the same cpu already holds in the "
        "interrupted task frame, taken at /home/ci/anyctx/src/anyctx/page/page_alloc.cc:388" % address,
        "anyctx: harness step: the report above happened at [program cpu 1 (anyctx cpu 1): task op %d "
        "alloc_pages > nmi injection 0 op %d alloc_pages; event %d]" % (op_a, op_b, event),
    ]


class TriageTest(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="fuzz-triage-")
        self.root = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def artifact(self, target, name, size, replay=None):
        d = os.path.join(self.root, "fuzz-artifacts", target)
        os.makedirs(os.path.join(d, "triage"), exist_ok=True)
        path = os.path.join(d, name)
        with open(path, "wb") as f:
            f.write(b"x" * size)
        if replay is not None:
            with open(os.path.join(d, "triage", name + ".log"), "w") as f:
                f.write(replay)
        return path

    def write(self, rel, text):
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def three_findings(self):
        """Two crashes of one bug (different addresses, op numbers, events; sizes 50 and 20) and a
        leak that only the fuzzer's log explains."""
        a = self.artifact("page_smp", "crash-aaaa", 50, replay_log(2, deadlock("0x5611aa", 3, 0, 57)))
        b = self.artifact("page_smp", "crash-bbbb", 20, replay_log(2, deadlock("0x7f00bb", 7, 1, 12)))
        c = self.artifact("slab_ops", "leak-cccc", 30, CLEAN_REPLAY)
        log = self.write("fuzz-work/slab_ops/fuzz.log", textwrap.dedent("""\
            INFO: Seed: 1
            #2 INITED cov: 100 ft: 200 corp: 3/99b exec/s: 0 rss: 40Mb

            =================================================================
            ==4242==ERROR: LeakSanitizer: detected memory leaks

            Direct leak of 64 byte(s) in 1 object(s) allocated from:
                #0 0x55d1 in malloc /usr/src/llvm/compiler-rt/lib/asan/asan_malloc_linux.cpp:69:3
                #1 0x55d2 in anyctx::kmalloc(unsigned long, anyctx::Gfp) /src/anyctx/src/anyctx/slab/slab.cc:88:12
                #2 0x55d3 in LLVMFuzzerTestOneInput /src/anyctx/fuzz/slab_ops.cc:6:1

            SUMMARY: AddressSanitizer: 64 byte(s) leaked in 1 allocation(s).
            INFO: a leak has been found in the initial corpus.

            MS: 0 ; base unit: 0000000000000000000000000000000000000000
            artifact_prefix='%s/'; Test unit written to %s
            """ % (os.path.dirname(c), c)))
        return a, b, c, log

    def run_main(self, args):
        out = io.StringIO()
        with redirect_stdout(out):
            rc = fuzz_triage.main(args)
        return rc, out.getvalue()

    # --- the grouping, end to end ----------------------------------------------------

    def test_two_signatures_three_files(self):
        a, b, c, log = self.three_findings()
        json_path = os.path.join(self.root, "triage.json")
        rc, out = self.run_main(["--json", json_path, "--fuzz-log", log, a, b, c])
        self.assertEqual(rc, 0)
        self.assertIn("=== triage: 3 finding(s), 2 distinct bug(s) ===", out)
        self.assertIn("bug 1 of 2: self-deadlock at src/anyctx/page/page_alloc.cc:412 in "
                      "task alloc_pages > nmi alloc_pages, 2 cpus", out)
        self.assertIn("  findings:   2 (crash 2) in page_smp", out)
        self.assertIn("  smallest:   %s (20 bytes)" % b, out)
        self.assertIn("  reproduce:  build/dev/fuzz/replay_page_smp %s" % b, out)
        self.assertIn("  explain:    ci/repro %s --target page_smp" % b, out)
        self.assertIn("  also:       " + a, out)
        self.assertIn("bug 2 of 2: LeakSanitizer: detected memory leaks at src/anyctx/slab/slab.cc:88, 1 cpu", out)

        with open(json_path) as f:
            summary = json.load(f)
        self.assertEqual(summary["version"], 1)
        self.assertEqual(summary["findings"], 3)
        self.assertEqual(len(summary["bugs"]), 2)
        first, second = summary["bugs"]
        self.assertEqual(first["signature"], {"oracle": "self-deadlock", "site": "src/anyctx/page/page_alloc.cc:412",
                                              "op": "task alloc_pages > nmi alloc_pages", "cpus": 2})
        self.assertEqual(first["count"], 2)
        self.assertEqual(first["kinds"], {"crash": 2})
        self.assertEqual(first["targets"], {"page_smp": 2})
        self.assertEqual(first["smallest"], {"path": b, "target": "page_smp", "kind": "crash", "bytes": 20})
        self.assertEqual([x["path"] for x in first["artifacts"]], [b, a])
        self.assertEqual({x["evidence"] for x in first["artifacts"]}, {"replay"})
        self.assertTrue(first["step"].startswith("[program cpu 1 (anyctx cpu 1): task op 7"))
        self.assertTrue(first["report"].startswith("anyctx: self-deadlock: cpu 0 (nmi)"))
        self.assertIsNone(first["minimized"])
        self.assertEqual(second["signature"], {"oracle": "LeakSanitizer: detected memory leaks",
                                               "site": "src/anyctx/slab/slab.cc:88", "op": "-", "cpus": 1})
        self.assertEqual(second["count"], 1)
        self.assertEqual(second["artifacts"][0]["evidence"], "fuzz-log")
        self.assertEqual(second["commands"]["sanitizers"], "build/fuzz/fuzz/fuzz_slab_ops " + c)

    def test_the_cpu_count_splits_a_signature(self):
        a = self.artifact("page_smp", "crash-a", 5, replay_log(2, deadlock("0x1", 1, 0, 9)))
        b = self.artifact("page_smp", "crash-b", 5, replay_log(3, deadlock("0x1", 1, 0, 9)))
        bugs = fuzz_triage.group(fuzz_triage.collect([a, b], []))
        self.assertEqual(sorted(sig[3] for sig, _ in bugs), [2, 3])

    def test_a_minimized_program_is_shown(self):
        a, b, c, log = self.three_findings()
        self.write("fuzz-artifacts/page_smp/minimized/crash-bbbb.txt",
                   "# anyctx program v2\ntarget page_smp\ncpu 0\n  alloc_pages spinning order=0 slot=0\n")
        rc, out = self.run_main(["--fuzz-log", log, a, b, c])
        self.assertIn("  minimized:  %s/fuzz-artifacts/page_smp/minimized/crash-bbbb.txt\n"
                      "    # anyctx program v2\n    target page_smp\n" % self.root, out)

    def test_no_findings_prints_nothing(self):
        json_path = os.path.join(self.root, "empty.json")
        rc, out = self.run_main(["--json", json_path])
        self.assertEqual((rc, out), (0, ""))
        with open(json_path) as f:
            self.assertEqual(json.load(f), {"version": 1, "findings": 0, "bugs": []})

    def test_without_evidence_the_kind_is_the_signature(self):
        a = self.artifact("page_ops", "crash-0001", 3)
        t = self.artifact("page_ops", "timeout-afl-0002", 4, CLEAN_REPLAY)
        sigs = {sig for sig, _ in fuzz_triage.group(fuzz_triage.collect([a, t], []))}
        self.assertEqual(sigs, {("(no report: crash)", "-", "-", 0), ("(no report: timeout)", "-", "-", 1)})

    # --- the replay and minimize runs, with a stand-in for anyctx-repro -------------

    def test_repro_is_run_for_each_finding_and_the_smallest_crash_is_minimized(self):
        fake = self.write("bin/fake-repro", textwrap.dedent("""\
            #!%s
            import sys
            args = sys.argv[1:]
            if "--minimize" in args:
                out = args[args.index("--out") + 1]
                open(out, "w").write("# anyctx program v2\\ntarget page_smp\\ncpu 0\\n")
                print("minimized: " + out)
                sys.exit(0)
            print("program (target page_smp):\\n# anyctx program v2\\ntarget page_smp\\ncpu 0\\ncpu 1\\n")
            print("run 1/1: FAILED (signal 6)\\nhit rate: 1/1 runs failed\\nfirst failure's output:")
            print("anyctx: harness: invariants: zone free list order 3 has a page of order 2 [program cpu 0 "
                  "(anyctx cpu 0): task op 4 free_pages; event 9]")
            print("args: " + " ".join(args))
            sys.exit(1)
            """ % sys.executable))
        os.chmod(fake, os.stat(fake).st_mode | stat.S_IXUSR)
        big = self.artifact("page_smp", "crash-big", 40)
        small = self.artifact("page_smp", "crash-small", 10)
        json_path = os.path.join(self.root, "t.json")
        rc, out = self.run_main(["--repro", fake, "--minimize-budget", "5", "--json", json_path, big, small])
        with open(json_path) as f:
            summary = json.load(f)
        self.assertEqual(len(summary["bugs"]), 1)
        bug = summary["bugs"][0]
        self.assertEqual(bug["signature"], {"oracle": "harness: invariants", "site": "-", "op": "task free_pages",
                                            "cpus": 2})
        self.assertEqual(bug["minimized"], os.path.join(os.path.dirname(small), "minimized", "crash-small.txt"))
        with open(os.path.join(os.path.dirname(small), "triage", "crash-big.log")) as f:
            self.assertIn("args: --runs 1 --timeout 10 --target page_smp " + big, f.read())
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(big), "minimized", "crash-big.txt")))

    # --- the parsers --------------------------------------------------------------------

    def test_oracle_names(self):
        o = fuzz_triage.oracle_of_anyctx
        self.assertEqual(o("self-deadlock: cpu 0 (irq) spins"), "self-deadlock")
        self.assertEqual(o("context rule: alloc_pages() in NMI context: use alloc_pages_nolock()"), "context rule")
        self.assertEqual(o("harness: invariants: zone: bad"), "harness: invariants")
        self.assertEqual(o("lock validator: order inversion: 'a' then 'b'"), "lock validator: order inversion")

    def test_oracle_option_prints_the_first_reports_oracle(self):
        with tempfile.TemporaryDirectory() as d:
            log = os.path.join(d, "log")
            with open(log, "w") as f:
                f.write("#1024 pulse cov: 80 ft: 90 corp: 3/30b exec/s: 512\n"
                        "anyctx: harness: after quiesce: invariants: memcg: cgroup 'root' overcharged\n"
                        "==9== ERROR: libFuzzer: deadly signal\n")
            out = io.StringIO()
            with redirect_stdout(out):
                self.assertEqual(fuzz_triage.main(["--oracle", log]), 0)
            self.assertEqual(out.getvalue(), "harness: after quiesce\n")
            with open(log, "w") as f:
                f.write("#1024 DONE cov: 80 ft: 90 corp: 3/30b exec/s: 512\n")
            out = io.StringIO()
            with redirect_stdout(out):
                self.assertEqual(fuzz_triage.main(["--oracle", log]), 0)
            self.assertEqual(out.getvalue(), "", "a log without a report names no oracle")

    def test_step_kind_drops_the_numbers(self):
        self.assertEqual(fuzz_triage.step_kind("[program cpu 0 (anyctx cpu 0): task op 1 spin_unlock > irq "
                                               "injection 0 op 0 spin_lock; event 3]"),
                         "task spin_unlock > irq spin_lock")

    def test_sanitizer_and_ubsan_reports(self):
        asan = fuzz_triage.parse_report(
            "==1==ERROR: AddressSanitizer: heap-use-after-free on address 0x602 at pc 0x1 bp 0x2\n"
            "READ of size 8 at 0x602 thread T1\n"
            "    #0 0x4f in anyctx::free_pages(anyctx::Page*, unsigned int) /w/src/anyctx/page/page_alloc.cc:700:5\n")
        self.assertEqual((asan["oracle"], asan["site"]),
                         ("AddressSanitizer: heap-use-after-free", "src/anyctx/page/page_alloc.cc:700"))
        ub = fuzz_triage.parse_report(
            "/w/src/anyctx/slab/slab.cc:51:17: runtime error: signed integer overflow: 2147483647 + 1\n"
            "SUMMARY: UndefinedBehaviorSanitizer: undefined-behavior /w/src/anyctx/slab/slab.cc:51:17\n")
        self.assertEqual((ub["oracle"], ub["site"]), ("runtime error: signed integer overflow",
                                                      "src/anyctx/slab/slab.cc:51"))
        lf = fuzz_triage.parse_report("==7== ERROR: libFuzzer: timeout after 10 seconds\n")
        self.assertEqual(lf["oracle"], "libFuzzer: timeout")

    def test_an_anyctx_report_wins_over_the_deadly_signal_after_it(self):
        r = fuzz_triage.parse_report(
            "anyctx: context rule: free_pages() in NMI context: use free_pages_nolock() [program cpu 0 "
            "(anyctx cpu 0): task op 2 alloc_pages > nmi injection 1 op 0 free_pages; event 40]\n"
            "==9== ERROR: libFuzzer: deadly signal\n"
            "    #0 0x1 in anyctx::Report::fatal() const /w/src/anyctx/ctx/report.cc:92:3\n")
        self.assertEqual((r["oracle"], r["site"], r["op"]), ("context rule", "", "task alloc_pages > nmi free_pages"))

    def test_a_replay_that_timed_out(self):
        failed, how, cpus, report = fuzz_triage.parse_replay_log(
            "program (target page_ops):\n# anyctx program v2\ntarget page_ops\ncpu 0\n  drain_all\n\n"
            "run 1/1: FAILED (timeout after 10000 ms)\nhit rate: 1/1 runs failed\nfirst failure's output:\n")
        self.assertTrue(failed)
        self.assertEqual((cpus, report["oracle"]), (1, "timeout"))

    def test_fuzz_log_split_by_artifact(self):
        parts = fuzz_triage.split_fuzz_log("one\nTest unit written to a/crash-1\ntwo\nTest unit written to a/crash-2\n")
        self.assertEqual(parts, {"a/crash-1": "one\n", "a/crash-2": "\ntwo\n"})


if __name__ == "__main__":
    unittest.main()
