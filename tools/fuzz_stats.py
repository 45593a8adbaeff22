#!/usr/bin/env python3
"""fuzz_stats: what ci/fuzz reads out of a fuzzer's output, and its table.

    fuzz_stats.py progress --engine libfuzzer [--crashes K] LOG
    fuzz_stats.py progress --engine afl [--crashes K] STATS...
        the live numbers of a running fuzzer, one line:
          libFuzzer: "execs E  exec/s R  cov C ft F  corpus N  crashes K"
            from the last status line of LOG ("-" for each when there is
            none yet);
          AFL++: "execs E  exec/s R  edges G  corpus N  crashes K  hangs H"
            over the instances' fuzzer_stats-style files (StatsD or
            fuzzer_stats; missing files count as nothing yet).

    fuzz_stats.py row --engine libfuzzer --target T --log LOG --rc RC
                  --elapsed S --seeds N --corpus-end M [ARTIFACT...]
    fuzz_stats.py row --engine afl --target T --log LOG --rc RC --seeds N
                  --stats FILE [--stats FILE...] [ARTIFACT...]
        one JSON line (a row of the summary) for a target that has run: its
        result (the kind of its newest artifact, CRASH, TIMEOUT, ...; else
        HUNG when the hard stop killed it, ERROR(rc) when it failed, ok),
        executions, exec/s, coverage, the corpus at the end and the inputs
        it added. libFuzzer's final statistics (-print_final_stats) win
        over its last status line; AFL++'s numbers are summed (executions,
        saved crashes and hangs) or the largest (edges, corpus, run time)
        over the instances, the first instance's file giving total_edges
        and bitmap_cvg.

    fuzz_stats.py afl-seed-findings LOG
        "KIND NAME" per seed that AFL++'s dry run reported as a crash or a
        timeout and skipped (a regression come back: a warning in its log).

    fuzz_stats.py statsd-listen PREFIX PORT_FILE N
        a UDP listener for AFL++'s StatsD metrics (AFL_STATSD): N sockets on
        127.0.0.1, their ports written to PORT_FILE (one line); the latest
        metrics sent to socket K go to PREFIX.K as "key : value" lines, the
        format of fuzzer_stats. It exits when its parent does.

    fuzz_stats.py summary --engine E --seconds N --jobs J [--merged T=V...] ROWS
        the summary table of the rows in ROWS (one JSON line each, as `row`
        printed them), a line for each target that failed without an
        artifact, and "fuzz targets: P passed, F failed". A target fails when
        its result is not ok or its merge (--merged T=error) failed.
        Exit status: 1 when one failed.

Options come before the files (argparse takes the files as one group).
Bad input (a row that is not JSON, a number that is not one) is an error
that names it: exit status 2.
"""

import argparse
import json
import os
import re
import select
import socket
import sys

# libFuzzer's status lines:
#   one process: "#4096 pulse  cov: 812 ft: 2301 corp: 140/9Kb lim: 4 exec/s: 585 rss: ..."
#   -fork:       "#9128: cov: 2999 ft: 4912 corp: 306 exec/s 278 oom/timeout/crash: 0/0/0 time: 22s ..."
LF_STATUS = re.compile(
    r"^#(\d+):?\s.*cov: (\d+) ft: (\d+) corp: (\d+)\S* .*exec/s:? (\d+)")
LF_FINAL = re.compile(r"^stat::(\w+):\s*(\S+)")
AFL_SEED = re.compile(r"Test case '[^']*orig:([^']*)' results in a (crash|timeout)")
ARTIFACT_KIND = re.compile(r"^(crash|leak|timeout|oom)-")


class StatsError(Exception):
    pass


def read_text(path):
    """Return: the file's text (bytes that are not UTF-8 replaced), "" when missing."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def lf_status(text):
    """Return: (execs, cov, ft, corpus, exec/s) of the last status line, or None."""
    last = None
    for line in text.splitlines():
        m = LF_STATUS.match(line)
        if m:
            last = tuple(int(g) for g in m.groups())
    return last


def lf_final(text):
    """Return: libFuzzer's final statistics (stat::NAME: VALUE), the last of each."""
    stats = {}
    for line in text.splitlines():
        m = LF_FINAL.match(line)
        if m:
            stats[m.group(1)] = m.group(2)
    return stats


def afl_stats(text):
    """Return: the KEY : VALUE pairs of a fuzzer_stats-style text (the first of each)."""
    stats = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if sep and key and key not in stats:
            stats[key] = value.strip()
    return stats


def afl_number(stats, key):
    """Return: the integer part of stats[key], 0 when it is missing or not a number."""
    m = re.match(r"^(\d+)", stats.get(key, ""))
    return int(m.group(1)) if m else 0


def afl_totals(files):
    """Return: the numbers of several instances' stats files, summed or the largest."""
    each = [afl_stats(read_text(f)) for f in files]
    total = lambda key: sum(afl_number(s, key) for s in each)  # noqa: E731
    largest = lambda key: max([afl_number(s, key) for s in each] or [0])  # noqa: E731
    first = each[0] if each else {}
    return {
        "execs": total("execs_done"),
        "exec_s": total("execs_per_sec"),
        "crashes": total("saved_crashes"),
        "hangs": total("saved_hangs"),
        "edges": largest("edges_found"),
        "corpus": largest("corpus_count"),
        "run_time": largest("run_time"),
        "total_edges": first.get("total_edges", ""),
        "bitmap_cvg": first.get("bitmap_cvg", ""),
        "present": bool(files) and os.path.isfile(files[0]),
    }


def progress(engine, paths, crashes):
    if engine == "libfuzzer":
        s = lf_status(read_text(paths[0]))
        e, c, f, n, r = s if s else ("-",) * 5
        return "execs %s  exec/s %s  cov %s ft %s  corpus %s  crashes %d" % (e, r, c, f, n, crashes)
    t = afl_totals(paths)
    return "execs %d  exec/s %d  edges %d  corpus %d  crashes %d  hangs %d" % (
        t["execs"], t["exec_s"], t["edges"], t["corpus"], crashes, t["hangs"])


def result_of(artifacts, rc, hard_stop_rcs=(124, 137)):
    """Return: the result word of a run: its newest artifact's kind, else by exit status."""
    kinds = [ARTIFACT_KIND.match(os.path.basename(a)) for a in artifacts]
    kinds = [k.group(1) for k in kinds if k]
    if kinds:
        return kinds[-1].upper()
    if rc in hard_stop_rcs:
        return "HUNG"
    if rc != 0:
        return "ERROR(%d)" % rc
    return "ok"


def lf_row(target, log, rc, elapsed, seeds, corpus_end, artifacts):
    """Return: the summary row of a libFuzzer run whose output is in `log`."""
    text = read_text(log)
    status = lf_status(text)
    final = lf_final(text)
    execs = final.get("number_of_executed_units")
    execs = int(execs) if execs is not None else (status[0] if status else None)
    if "average_exec_per_sec" in final:
        rate = float(final["average_exec_per_sec"])
    elif execs is not None and elapsed > 0:
        rate = execs // elapsed
    else:
        rate = None
    added = final.get("new_units_added")
    return {
        "target": target,
        "result": result_of(artifacts, rc),
        "execs": execs,
        "exec_s": rate,
        "coverage": "cov %d ft %d" % (status[1], status[2]) if status else None,
        "corpus": corpus_end,
        "new": int(added) if added is not None else corpus_end - seeds,
        "crashes": len(artifacts),
        "artifacts": artifacts,
        "log": log,
    }


def afl_row(target, log, stats, rc, seeds, artifacts):
    """Return: the summary row of an AFL++ run over the instances' `stats` files."""
    t = afl_totals(stats)
    named = lambda prefix: any(os.path.basename(a).startswith(prefix) for a in artifacts)  # noqa: E731
    if t["crashes"] > 0 or named("crash-afl-"):
        result = "CRASH"
    elif t["hangs"] > 0 or named("timeout-afl-"):
        result = "TIMEOUT"
    elif rc != 0 or not t["present"]:
        result = "ERROR(%d)" % rc
    else:
        result = "ok"
    return {
        "target": target,
        "result": result,
        "execs": t["execs"],
        "exec_s": t["execs"] // t["run_time"] if t["run_time"] > 0 else None,
        "coverage": ("edges %d/%s %s" % (t["edges"], t["total_edges"] or "?", t["bitmap_cvg"])).strip(),
        "corpus": t["corpus"],
        "new": max(t["corpus"] - seeds, 0),
        "crashes": max(len(artifacts), t["crashes"] + t["hangs"]),
        "artifacts": artifacts,
        "log": log,
    }


def statsd_lines(datagram):
    """Return: the fuzzing.* metrics of a StatsD datagram as fuzzer_stats lines
    ("execs_done : 1234\n"), in order; other lines are skipped."""
    lines = []
    for line in datagram.splitlines():
        key, _, rest = line.partition(":")
        if key.startswith("fuzzing."):
            lines.append("%s : %s\n" % (key[len("fuzzing."):], rest.split("|", 1)[0]))
    return lines


def write_atomically(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def statsd_listen(prefix, port_file, n):
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    write_atomically(port_file, " ".join(str(s.getsockname()[1]) for s in socks) + "\n")
    parent = os.getppid()
    while os.getppid() == parent:
        ready, _, _ = select.select(socks, [], [], 1.0)
        for s in ready:
            lines = statsd_lines(s.recv(65536).decode("ascii", "replace"))
            write_atomically("%s.%d" % (prefix, socks.index(s)), "".join(lines))


def read_rows(path):
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise StatsError("%s:%d: not a row of fuzz_stats.py row (%s)" % (path, number, e))
        if not isinstance(row, dict) or "target" not in row or "result" not in row:
            raise StatsError("%s:%d: a row needs a target and a result" % (path, number))
        rows.append(row)
    return rows


def cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return "%.0f" % value
    return str(value)


def summary(rows, engine, seconds, jobs, merged):
    """Return: (the text of the summary, how many targets failed)."""
    out = ["", "=== ci/fuzz summary (%s, %ss per target, %s job(s)) ===" % (engine, seconds, jobs)]
    fmt = "%-14s %-10s %12s %8s  %-28s %7s %6s %7s"
    header = ["target", "result", "execs", "exec/s", "coverage", "corpus", "new", "crashes"]
    if merged:
        fmt += " %7s"
        header.append("merged")
    out.append(fmt % tuple(header))
    failed = 0
    for row in rows:
        cells = [row["target"], row["result"]] + [cell(row.get(k)) for k in ("execs", "exec_s", "coverage", "corpus",
                                                                         "new")]
        cells.append(cell(row.get("crashes", 0)))
        merge = merged.get(row["target"])
        if merged:
            cells.append(merge or "-")
        out.append(fmt % tuple(cells))
        failed += row["result"] != "ok" or merge == "error"
    for row in rows:
        if row["result"] != "ok" and not row.get("artifacts"):
            out.append("%s: %s without an artifact; see %s" % (row["target"], row["result"], row.get("log", "its log")))
    out.append("fuzz targets: %d passed, %d failed" % (len(rows) - failed, failed))
    return "\n".join(out), failed


def seed_findings(text):
    """Return: [(kind, seed name)] of the seeds AFL++'s dry run skipped, by name:
    a timeout when any of its lines says so, else a crash."""
    kinds = {}
    for m in AFL_SEED.finditer(text):
        name, kind = m.group(1), m.group(2)
        if kinds.get(name) != "timeout":
            kinds[name] = kind
    return [(kinds[name], name) for name in sorted(kinds)]


def number(text, what):
    try:
        return int(text)
    except ValueError:
        raise StatsError("%s: %r is not a whole number" % (what, text))


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="fuzz_stats.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("progress")
    pr.add_argument("--engine", required=True, choices=["libfuzzer", "afl"])
    pr.add_argument("--crashes", default="0")
    pr.add_argument("paths", nargs="+")
    rw = sub.add_parser("row")
    rw.add_argument("--engine", required=True, choices=["libfuzzer", "afl"])
    rw.add_argument("--target", required=True)
    rw.add_argument("--log", required=True)
    rw.add_argument("--rc", default="0")
    rw.add_argument("--elapsed", default="0")
    rw.add_argument("--seeds", default="0")
    rw.add_argument("--corpus-end", default="0")
    rw.add_argument("--stats", action="append", default=[])
    rw.add_argument("paths", nargs="*")
    sf = sub.add_parser("afl-seed-findings")
    sf.add_argument("log")
    sl = sub.add_parser("statsd-listen")
    sl.add_argument("prefix")
    sl.add_argument("port_file")
    sl.add_argument("n")
    sm = sub.add_parser("summary")
    sm.add_argument("--engine", required=True)
    sm.add_argument("--seconds", required=True)
    sm.add_argument("--jobs", required=True)
    sm.add_argument("--merged", action="append", default=[])
    sm.add_argument("rows")
    a = p.parse_args(args)
    try:
        if a.command == "progress":
            print(progress(a.engine, a.paths, number(a.crashes, "--crashes")))
            return 0
        if a.command == "row":
            rc, seeds = number(a.rc, "--rc"), number(a.seeds, "--seeds")
            if a.engine == "libfuzzer":
                row = lf_row(a.target, a.log, rc, number(a.elapsed, "--elapsed"), seeds,
                             number(a.corpus_end, "--corpus-end"), a.paths)
            else:
                if not a.stats:
                    raise StatsError("row afl: no --stats FILE")
                row = afl_row(a.target, a.log, a.stats, rc, seeds, a.paths)
            print(json.dumps(row))
            return 0
        if a.command == "statsd-listen":
            statsd_listen(a.prefix, a.port_file, number(a.n, "N"))
            return 0
        if a.command == "afl-seed-findings":
            for kind, name in seed_findings(read_text(a.log)):
                print(kind, name)
            return 0
        merged = {}
        for m in a.merged:
            target, sep, value = m.partition("=")
            if not sep:
                raise StatsError("--merged %r: expected TARGET=VALUE" % m)
            merged[target] = value
        text, failed = summary(read_rows(a.rows), a.engine, a.seconds, a.jobs, merged)
        print(text)
        return 1 if failed else 0
    except StatsError as e:
        sys.stderr.write("fuzz_stats.py: %s\n" % e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
