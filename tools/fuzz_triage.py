#!/usr/bin/env python3
"""fuzz_triage: group the findings of a ci/fuzz run into distinct bugs.

    tools/fuzz_triage.py [--repro BIN] [--timeout S] [--minimize-budget S]
                         [--max-replays N] [--fuzz-log LOG]... [--json FILE]
                         [--fuzz-bin-dir DIR] [--replay-bin-dir DIR] ARTIFACT...

Each ARTIFACT is a finding as ci/fuzz leaves it, build/fuzz-artifacts/NAME/
KIND-HASH (KIND: crash, leak, timeout, oom; AFL++'s crash-afl-, timeout-afl-),
NAME being the fuzz target. Its report is taken from, in this order:

  1. the replay log DIR/triage/BASENAME.log: `anyctx-repro --runs 1 --target
     NAME ARTIFACT` (the program as text, then the child's stderr). With
     --repro BIN the tool runs it and writes the log; without, it reads a log
     that is already there. Used when the replay failed.
  2. a fuzzer log (--fuzz-log, libFuzzer's output): the text before the line
     "Test unit written to ARTIFACT" and after the previous such line, for the
     findings a plain debug replay does not show (ASan, LSan, OOM).

Signature of a finding (two findings with equal signatures are one bug):
  oracle  the kind of the first report, as it prints it: "anyctx: KIND: ..."
          gives KIND ("self-deadlock", "context rule"; the namespaced kinds
          keep their namespace: "harness: invariants", "lock validator: order
          inversion", "stress: content"); else a sanitizer's "ERROR: X: Y"
          gives "X: Y" ("AddressSanitizer: heap-use-after-free", "libFuzzer:
          timeout"); a UBSan "runtime error: WHAT" gives "runtime error:
          WHAT"; a replay killed by its time limit "timeout"; else "(no
          report: KIND)"
  site    where the report points: the first "at FILE:LINE" of the anyctx
          line, else the first stack frame in the project's src/, else the
          location of a UBSan runtime error; FILE from its last "src/" on;
          "-" when the report names none
  op      the kind of program step the report happened in: the frames of the
          step bracket without their numbers ("task alloc_pages > nmi
          free_pages"), "-" outside a step
  cpus    the CPU count of the program (the replay log's program text),
          0 when unknown

It prints one block per distinct bug, most findings first: the signature,
the count (per kind and target), the report line, the smallest reproducer (by
file size) with the commands that replay it, the other findings, and the
minimized program when there is one: DIR/minimized/BASENAME.txt, made with
--repro and --minimize-budget S > 0 (anyctx-repro --minimize, only for a
crash) or already there. --json FILE writes the same as JSON (see to_json).
Exit status 0 (the triage judges nothing), 2 on bad usage.
"""

import argparse
import json
import os
import re
import subprocess
import sys

KINDS = ("crash", "leak", "timeout", "oom")
# Report kinds that are "NAMESPACE: WHAT" (src/harness, the lock validator).
NAMESPACES = ("harness", "lock validator", "stress")

ANYCTX_LINE = re.compile(r"^anyctx: (.*)$")
STEP_LINE = re.compile(r"^anyctx: harness step: .*?(\[program cpu .*\])\s*$")
BRACKET = re.compile(r"(\[program cpu [^\]]*\])\s*$")
AT_SITE = re.compile(r"\bat (\S+?):(\d+)\b")
SAN_ERROR = re.compile(r"ERROR: (\w+): ?([^(]*?)(?: on |\s*\(|$)")
UBSAN = re.compile(r"^(\S+?):(\d+)(?::\d+)?: runtime error: ([^:]+)")
FRAME = re.compile(r"^\s*#\d+ 0x[0-9a-fA-F]+ in .*? (\S+?):(\d+)(?::\d+)?\s*$")
UNIT_WRITTEN = re.compile(r"Test unit written to (\S+)")
CPU_LINE = re.compile(r"^cpu \d+\s*$")
REPLAY_FAILED = re.compile(r"^run \d+/\d+: FAILED \((.*)\)\s*$")


def project_path(path):
    """A source path from its last src/ on (the checkout's location dropped)."""
    i = path.rfind("/src/")
    if i >= 0:
        return path[i + 1:]
    return path


def oracle_of_anyctx(text):
    """'self-deadlock: cpu 0 ...' -> 'self-deadlock'; 'harness: invariants: x' -> 'harness: invariants'."""
    parts = text.split(": ")
    if len(parts) >= 3 and parts[0] in NAMESPACES:
        return parts[0] + ": " + parts[1]
    return parts[0]


def step_kind(bracket):
    """'[program cpu 0 (anyctx cpu 0): task op 3 alloc_pages > nmi injection 0 op 1 free_pages; event 57]'
    -> 'task alloc_pages > nmi free_pages' (as harness/child.cc's step_kind_of)."""
    b = bracket.find("): ")
    if b < 0:
        return ""
    e = bracket.find("; event", b)
    words = bracket[b + 3:e if e >= 0 else len(bracket)].rstrip("]").split()
    out, skip = [], False
    for w in words:
        if skip:
            skip = False
            continue
        if w in ("op", "injection"):
            skip = True
            continue
        out.append(w)
    return " ".join(out)


def parse_report(text):
    """The first report in TEXT: {oracle, site, op, step, report} (values '' when absent)."""
    r = {"oracle": "", "site": "", "op": "", "step": "", "report": ""}
    frame_site = ""
    ubsan_site = ""
    sanitizer = False  # the oracle is a sanitizer's: its stack names the site
    for raw in text.splitlines():
        line = raw.rstrip("\n")
        m = STEP_LINE.match(line)
        if m:
            if not r["step"]:
                r["step"] = m.group(1)
            continue
        m = ANYCTX_LINE.match(line)
        if m and not r["oracle"]:
            r["oracle"] = oracle_of_anyctx(m.group(1))
            r["report"] = line
            s = AT_SITE.search(m.group(1))
            if s:
                r["site"] = "%s:%s" % (project_path(s.group(1)), s.group(2))
            b = BRACKET.search(line)
            if b and not r["step"]:
                r["step"] = b.group(1)
            continue
        m = UBSAN.match(line)
        if m:
            if not r["oracle"]:
                r["oracle"] = "runtime error: " + m.group(3).strip()
                r["report"] = line
            if not ubsan_site:
                ubsan_site = "%s:%s" % (project_path(m.group(1)), m.group(2))
            continue
        if "ERROR: " in line and not r["oracle"]:
            m = SAN_ERROR.search(line)
            if m and (m.group(1).endswith("Sanitizer") or m.group(1) == "libFuzzer"):
                what = re.sub(r" after \d+ seconds?$", "", m.group(2).strip().rstrip(":"))
                r["oracle"] = m.group(1) + (": " + what if what else "")
                r["report"] = line.strip()
                sanitizer = True
            continue
        m = FRAME.match(line)
        if m and sanitizer and not frame_site and "/src/" in m.group(1) and "compiler-rt" not in m.group(1):
            frame_site = "%s:%s" % (project_path(m.group(1)), m.group(2))
    if not r["site"]:
        r["site"] = frame_site or ubsan_site
    r["op"] = step_kind(r["step"]) if r["step"] else ""
    return r


def parse_replay_log(text):
    """An anyctx-repro --runs 1 log: (failed, how, cpus, report or None)."""
    cpus = 0
    in_program = False
    failed, how = False, ""
    for line in text.splitlines():
        if line.startswith("program (target "):
            in_program = True
            continue
        if in_program and CPU_LINE.match(line):
            cpus += 1
            continue
        m = REPLAY_FAILED.match(line)
        if m:
            in_program = False
            if not failed:
                failed, how = True, m.group(1)
            continue
        if line.startswith("run ") or line.startswith("hit rate:"):
            in_program = False
    report = None
    if failed:
        tail = text.split("first failure's output:\n", 1)
        report = parse_report(tail[1] if len(tail) == 2 else text)
        if not report["oracle"] and how.startswith("timeout"):
            report["oracle"] = "timeout"
            report["report"] = "replay: " + how
    return failed, how, cpus, report


def split_fuzz_log(text):
    """libFuzzer output -> {artifact path: the text of its report}."""
    out = {}
    start = 0
    for m in UNIT_WRITTEN.finditer(text):
        out[os.path.normpath(m.group(1))] = text[start:m.start()]
        start = m.end()
    return out


class Finding:
    def __init__(self, path):
        self.path = path
        self.name = os.path.basename(path)
        self.target = os.path.basename(os.path.dirname(os.path.abspath(path)))
        kind = self.name.split("-", 1)[0]
        self.kind = kind if kind in KINDS else "crash"
        try:
            self.bytes = os.path.getsize(path)
        except OSError:
            self.bytes = -1
        self.cpus = 0
        self.evidence = "none"
        self.report = {"oracle": "", "site": "", "op": "", "step": "", "report": ""}

    @property
    def dir(self):
        return os.path.dirname(self.path)

    @property
    def replay_log(self):
        return os.path.join(self.dir, "triage", self.name + ".log")

    @property
    def minimized(self):
        return os.path.join(self.dir, "minimized", self.name + ".txt")

    def signature(self):
        return (self.report["oracle"] or "(no report: %s)" % self.kind,
                self.report["site"] or "-",
                self.report["op"] or "-",
                self.cpus)


def run_replay(repro, finding, timeout_s):
    os.makedirs(os.path.dirname(finding.replay_log), exist_ok=True)
    cmd = [repro, "--runs", "1", "--timeout", str(timeout_s), "--target", finding.target, finding.path]
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout_s + 30)
        out = p.stdout.decode("utf-8", "replace")
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode("utf-8", "replace") + "\nfuzz_triage: anyctx-repro ran past %d s\n" % (
            timeout_s + 30)
    with open(finding.replay_log, "w", encoding="utf-8") as f:
        f.write(out)


def run_minimize(repro, finding, timeout_s, budget_s):
    os.makedirs(os.path.dirname(finding.minimized), exist_ok=True)
    cmd = [repro, "--minimize", "--budget", str(budget_s), "--timeout", str(timeout_s),
           "--target", finding.target, "--out", finding.minimized, finding.path]
    ok = False
    with open(finding.minimized + ".log", "w", encoding="utf-8") as log:
        try:
            ok = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=budget_s + 30).returncode == 0
        except subprocess.TimeoutExpired:
            log.write("fuzz_triage: anyctx-repro --minimize ran past %d s\n" % (budget_s + 30))
    if not ok and os.path.exists(finding.minimized):
        os.remove(finding.minimized)
    return ok


def collect(paths, fuzz_logs, repro=None, timeout_s=10, max_replays=200):
    reports = {}
    for log in fuzz_logs:
        try:
            with open(log, encoding="utf-8", errors="replace") as f:
                reports.update(split_fuzz_log(f.read()))
        except OSError:
            pass
    findings = []
    replays = 0
    for path in paths:
        fd = Finding(path)
        if repro and replays < max_replays:
            run_replay(repro, fd, timeout_s)
            replays += 1
        if os.path.exists(fd.replay_log):
            with open(fd.replay_log, encoding="utf-8", errors="replace") as f:
                failed, _, fd.cpus, report = parse_replay_log(f.read())
            if failed and report["oracle"]:
                fd.report, fd.evidence = report, "replay"
        if fd.evidence == "none":
            text = reports.get(os.path.normpath(path))
            if text is not None:
                report = parse_report(text)
                if report["oracle"]:
                    fd.report, fd.evidence = report, "fuzz-log"
        findings.append(fd)
    return findings


def group(findings):
    """Bugs, most findings first: [(signature, [findings smallest first])]."""
    by_sig = {}
    for fd in findings:
        by_sig.setdefault(fd.signature(), []).append(fd)
    bugs = [(sig, sorted(fds, key=lambda f: (f.bytes, f.path))) for sig, fds in by_sig.items()]
    bugs.sort(key=lambda b: (-len(b[1]), b[0]))
    return bugs


def commands(fd, fuzz_bin_dir, replay_bin_dir):
    return {
        "reproduce": "%s/replay_%s %s" % (replay_bin_dir, fd.target, fd.path),
        "sanitizers": "%s/fuzz_%s %s" % (fuzz_bin_dir, fd.target, fd.path),
        "explain": "ci/repro %s --target %s" % (fd.path, fd.target),
    }


def counts(items):
    out = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return dict(sorted(out.items()))


def to_json(bugs, fuzz_bin_dir, replay_bin_dir):
    out = {"version": 1, "findings": sum(len(f) for _, f in bugs), "bugs": []}
    for n, (sig, fds) in enumerate(bugs, 1):
        small = fds[0]
        minimized = next((f.minimized for f in fds if os.path.exists(f.minimized)), None)
        out["bugs"].append({
            "id": n,
            "signature": {"oracle": sig[0], "site": sig[1], "op": sig[2], "cpus": sig[3]},
            "count": len(fds),
            "kinds": counts(f.kind for f in fds),
            "targets": counts(f.target for f in fds),
            "report": small.report["report"],
            "step": small.report["step"],
            "smallest": {"path": small.path, "target": small.target, "kind": small.kind, "bytes": small.bytes},
            "minimized": minimized,
            "commands": commands(small, fuzz_bin_dir, replay_bin_dir),
            "artifacts": [{"path": f.path, "target": f.target, "kind": f.kind, "bytes": f.bytes,
                           "evidence": f.evidence} for f in fds],
        })
    return out


def describe(sig):
    oracle, site, op, cpus = sig
    text = oracle
    if site != "-":
        text += " at " + site
    if op != "-":
        text += " in " + op
    if cpus:
        text += ", %d cpu%s" % (cpus, "" if cpus == 1 else "s")
    return text


def shorten(line, width=200):
    return line if len(line) <= width else line[:width - 3] + "..."


def render(summary, also=5, program_lines=30):
    bugs = summary["bugs"]
    lines = ["=== triage: %d finding(s), %d distinct bug(s) ===" % (summary["findings"], len(bugs))]
    for b in bugs:
        s = b["signature"]
        lines.append("")
        lines.append("bug %d of %d: %s" % (b["id"], len(bugs), describe((s["oracle"], s["site"], s["op"], s["cpus"]))))
        per_kind = ", ".join("%s %d" % kv for kv in b["kinds"].items())
        per_target = ", ".join("%s %d" % kv if len(b["targets"]) > 1 else kv[0] for kv in b["targets"].items())
        lines.append("  findings:   %d (%s) in %s" % (b["count"], per_kind, per_target))
        if b["report"]:
            lines.append("  report:     " + shorten(b["report"]))
        sm = b["smallest"]
        lines.append("  smallest:   %s (%d bytes)" % (sm["path"], sm["bytes"]))
        for key in ("reproduce", "sanitizers", "explain"):
            lines.append("  %-11s %s" % (key + ":", b["commands"][key]))
        others = [a["path"] for a in b["artifacts"][1:]]
        for p in others[:also]:
            lines.append("  also:       " + p)
        if len(others) > also:
            lines.append("  ... and %d more" % (len(others) - also))
        if b["minimized"]:
            lines.append("  minimized:  " + b["minimized"])
            try:
                with open(b["minimized"], encoding="utf-8", errors="replace") as f:
                    program = f.read().splitlines()
            except OSError:
                program = []
            if 0 < len(program) <= program_lines:
                lines.extend("    " + p for p in program)
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description="group fuzz findings into distinct bugs")
    ap.add_argument("artifacts", nargs="*", metavar="ARTIFACT")
    ap.add_argument("--json", metavar="FILE", help="write the summary as JSON to FILE")
    ap.add_argument("--repro", metavar="BIN", help="anyctx-repro: replay each finding (and minimize)")
    ap.add_argument("--timeout", type=int, default=10, metavar="S", help="per replay run (default 10)")
    ap.add_argument("--minimize-budget", type=int, default=0, metavar="S",
                    help="with --repro: minimize the smallest crash of each bug for S seconds (default 0: no)")
    ap.add_argument("--max-replays", type=int, default=200, metavar="N",
                    help="with --repro: replay at most N findings (default 200)")
    ap.add_argument("--fuzz-log", action="append", default=[], metavar="LOG",
                    help="a libFuzzer log whose reports name their artifacts (repeatable)")
    ap.add_argument("--fuzz-bin-dir", default="build/fuzz/fuzz", metavar="DIR")
    ap.add_argument("--replay-bin-dir", default="build/dev/fuzz", metavar="DIR")
    ap.add_argument("--oracle", metavar="LOG",
                    help="print the oracle of LOG's first report (nothing when it has none) and exit")
    args = ap.parse_args(argv)
    if args.oracle:
        with open(args.oracle, encoding="utf-8", errors="replace") as f:
            oracle = parse_report(f.read())["oracle"]
        if oracle:
            print(shorten(oracle, 60))
        return 0
    if args.timeout < 1 or args.minimize_budget < 0 or args.max_replays < 0:
        ap.error("--timeout must be positive, --minimize-budget and --max-replays not negative")

    findings = collect(args.artifacts, args.fuzz_log, args.repro, args.timeout, args.max_replays)
    bugs = group(findings)
    if args.repro and args.minimize_budget > 0:
        for _, fds in bugs:
            crash = next((f for f in fds if f.kind == "crash"), None)
            if crash is not None:
                run_minimize(args.repro, crash, args.timeout, args.minimize_budget)
    summary = to_json(bugs, args.fuzz_bin_dir, args.replay_bin_dir)
    if bugs:
        sys.stdout.write(render(summary))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
