#!/usr/bin/env python3
"""bench/report.py — turns one ci/bench run into the ratio table, the lock
and signal tables, the target verdicts, one combined JSON and a gnuplot PNG.

  python3 bench/report.py RUN_DIR [--docs DIR]

RUN_DIR (build/bench) holds what ci/bench wrote:
  machine.json                     date, CPU, load, commit
  alloc/<subject>.round<k>.group<g>.json
                                   Google Benchmark output, one file per
                                   subject, round and row group (the subjects
                                   interleaved group by group)
  lock/lock_study.json, lock/lock_study_rmw.json
  signal/<subject>.<mode>.json     signal_bench output (mode: storm,
                                   control, baseline)
  micro/*.json                     the per-layer micro-benchmarks (kept raw)

Writes RUN_DIR/results.json (everything above in one file), RUN_DIR/results.md
(the tables, as printed), RUN_DIR/bench.png (+ the gnuplot script and data);
with --docs, copies results.json, results.md and bench.png there.

Metric: CPU time per alloc+free pair (Google Benchmark's cpu_time: the
threads' CPU clocks summed, divided by the pairs), the minimum over the
rounds. The machines this runs on change speed by up to half within seconds
(a neighbour on the host: glibc's malloc and anyctx's kmalloc slow down
together in one process), which only ever adds time; the minimum is each
subject's cost where nothing interfered, and a ratio is the two minima's.
Each ratio's median over the rounds of the two rows' ratio within the round
(run a second or two apart; ci/bench interleaves them) is kept beside it.
CPU time, not wall time, because the machines this runs on are shared: a
thread that is descheduled does not bill the allocator. Producer/consumer
rows count one pair per object handed over (two thread-iterations).
"""

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys

PEERS = ["glibc", "jemalloc", "tcmalloc", "mimalloc"]
SIZES = [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]

# (label, anyctx op, peer op); each op is the benchmark name without the
# /real_time/threads:N suffix.
ROWS = (
    [
        ("page: alloc_pages+free_pages vs malloc(4096)+free", "page/alloc_pages", "page/malloc_4096"),
        ("page: alloc_pages_nolock+free_pages_nolock vs calloc(1,4096)+free", "page/alloc_pages_nolock",
         "page/calloc_4096"),
    ]
    + [(f"kmalloc+kfree {n} B vs malloc+free", f"small/kmalloc/{n}", f"small/malloc/{n}") for n in SIZES]
    + [(f"kmalloc_nolock+kfree_nolock {n} B vs malloc+free", f"small/kmalloc_nolock/{n}", f"small/malloc/{n}")
       for n in SIZES]
    + [
        ("prodcons: kmalloc 64 B, kfree on another CPU vs malloc/free", "prodcons/kmalloc/64", "prodcons/malloc/64"),
        ("prodcons: kmalloc_nolock 64 B, kfree_nolock on another CPU vs malloc/free", "prodcons/kmalloc_nolock/64",
         "prodcons/malloc/64"),
        ("prodcons: alloc_pages, free_pages on another CPU vs malloc(4096)/free", "prodcons/alloc_pages",
         "prodcons/malloc_4096"),
        ("prodcons: alloc_pages_nolock, free_pages_nolock on another CPU vs calloc(1,4096)/free",
         "prodcons/alloc_pages_nolock", "prodcons/calloc_4096"),
    ]
)


def short_label(op):
    return op.replace("small/", "").replace("prodcons/", "pc/").replace("page/", "")


def load_json(path):
    with open(path) as f:
        return json.load(f)


def op_of(name):
    parts = [p for p in name.split("/") if p != "real_time" and not p.startswith("threads:")]
    return "/".join(parts)


def run_name(path):
    """(subject, round) of alloc/<subject>.round<k>[.group<g>].json."""
    base = os.path.basename(path)[: -len(".json")]
    subject, _, rest = base.partition(".round")
    return subject, int(rest.partition(".")[0] or 0)


def collect_alloc(run_dir):
    """{subject: {(op, threads): {round: cpu ns per pair}}}, raw runs, failures."""
    values, raw, failed = {}, [], {}  # failed: {(subject, op, threads): [nullptr fraction per round]}
    for path in sorted(glob.glob(os.path.join(run_dir, "alloc", "*.json"))):
        subject, rnd = run_name(path)
        doc = load_json(path)
        raw.append({"subject": subject, "round": rnd, "file": os.path.relpath(path, run_dir), "gbench": doc})
        for b in doc.get("benchmarks", []):
            if b.get("run_type", "iteration") != "iteration" or b.get("error_occurred"):
                continue
            op, threads = op_of(b["run_name"]), int(b.get("threads", 1))
            ns = float(b["cpu_time"])
            if op.startswith("prodcons/"):
                ns *= threads  # one pair = one iteration on each of the two threads
            values.setdefault(subject, {}).setdefault((op, threads), {})[rnd] = ns
            if "failed" in b:
                pairs = b["iterations"] / (threads if op.startswith("prodcons/") else 1)
                failed.setdefault((subject, op, threads), []).append(b["failed"] / pairs if pairs else 0.0)
    return values, raw, failed


def paired_ratio(a, b):
    """Median over the rounds both have of a[round] / b[round], or None."""
    common = [k for k in a if k in b and b[k]]
    return statistics.median(a[k] / b[k] for k in common) if common else None


def median(xs):
    return statistics.median(xs) if xs else None


def fmt_ns(x):
    if x is None:
        return "-"
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}"


def fastest(xs):
    """Minimum of a {round: value} dict's values, or None when empty."""
    return min(xs.values()) if xs else None


def ratio_table(values, failed):
    """Rows of the ratio table, and the data behind them: each subject's ns
    is its minimum over rounds, each ratio the two minima's (ratio), with
    the median of the rounds' ratios beside it (ratio_paired); the fastest
    peer is the one with the lowest minimum."""
    anyctx = values.get("anyctx", {})
    peers = [p for p in PEERS if p in values]
    threads_all = sorted({t for (_, t) in anyctx})
    rows = []
    for label, aop, pop in ROWS:
        for t in threads_all:
            a_rounds = anyctx.get((aop, t), {})
            a = fastest(a_rounds)
            if a is None:
                continue
            peer_rounds = {p: values[p].get((pop, t), {}) for p in peers}
            peer_ns = {p: fastest(v) for p, v in peer_rounds.items()}
            present = {p: v for p, v in peer_ns.items() if v is not None}
            best = min(present, key=present.get) if present else None
            rows.append({
                "label": label, "anyctx_op": aop, "peer_op": pop, "threads": t, "anyctx_ns": a,
                "anyctx_rounds": a_rounds, "peer_ns": peer_ns, "best": best,
                "ratio_best": a / present[best] if best else None,
                "ratio": {p: (a / v if v else None) for p, v in peer_ns.items()},
                "ratio_paired": {p: paired_ratio(a_rounds, v) for p, v in peer_rounds.items()},
                "nullptr_fraction": median(failed.get(("anyctx", aop, t), [])) or 0.0,
            })
    return rows, peers


def render_ratio_table(rows, peers):
    head = ["anyctx row", "thr", "anyctx"] + [f"{p} (x)" for p in peers] + ["fastest peer", "x fastest"]
    lines = []
    body = []
    for r in rows:
        nul = r["nullptr_fraction"]
        cells = [short_label(r["anyctx_op"]) + (f" [nullptr {100 * nul:.0f} %]" if nul > 0 else ""),
                 str(r["threads"]), fmt_ns(r["anyctx_ns"])]
        for p in peers:
            v = r["peer_ns"].get(p)
            cells.append("-" if v is None else f"{fmt_ns(v)} ({fmt_ratio(r['ratio'][p])})")
        cells += [r["best"] or "-", fmt_ratio(r["ratio_best"])]
        body.append(cells)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    def line(cells):
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    lines.append(line(head))
    lines.append("|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
    lines += [line(c) for c in body]
    return "\n".join(lines)


def collect_lock(run_dir):
    """{(variant, "cs:C/think:T", threads): {"macq": M acquisitions/s, "cpu_ns": .., "rmw": ..}}"""
    out = {}
    for kind in ("lock_study", "lock_study_rmw"):
        path = os.path.join(run_dir, "lock", kind + ".json")
        if not os.path.exists(path):
            continue
        for b in load_json(path).get("benchmarks", []):
            if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
                continue
            if b.get("run_type") == "iteration" and b.get("repetitions", 1) > 1:
                continue
            parts = op_of(b["run_name"]).split("/")  # lock, variant, cs:C, think:T
            variant = parts[1]
            shape = "/".join(parts[2:])
            key = (variant, shape, int(b.get("threads", 1)))
            d = out.setdefault(key, {})
            if kind == "lock_study":
                d["macq"] = b.get("items_per_second", 0) / 1e6
                d["cpu_ns"] = b["cpu_time"]
            elif "rmw_per_acq" in b:
                d["rmw"] = b["rmw_per_acq"]
                c = b.get("contended")
                d["contended"] = c
                # Uncontended acquisitions took exactly one RMW.
                d["rmw_per_contended"] = (b["rmw_per_acq"] - (1 - c)) / c if c else None
    return out


LOCK_VARIANTS = [
    ("original", "try_lock then lock (the merged 6.15 code)"),
    ("branch_first", "option (b): branch on the flag first"),
    ("spinlock", "option (a): anyctx::Spinlock::lock"),
    ("std_mutex", "std::mutex"),
    ("pthread_spin", "pthread_spinlock_t"),
]


SHAPES = {
    "cs:0/think:0": "every thread hammers the lock",
    "cs:0/think:100": "short section, 100 rounds of private work between acquisitions",
    "cs:50/think:100": "50 rounds inside the lock, 100 outside: a third of the cycle under the lock",
}


def shape_key(shape):
    return tuple(int(p.split(":")[1]) for p in shape.split("/"))


def render_lock_table(lock):
    threads = sorted({t for (_, _, t) in lock})
    shapes = sorted({k for (_, k, _) in lock}, key=shape_key)
    out = []
    for shape in shapes:
        out.append(f"{shape} ({SHAPES.get(shape, '')}):\n")
        head = ["variant", "threads", "M acq/s", "RMW / acq", "contended", "RMW / contended acq"]
        body = []
        for v, _ in LOCK_VARIANTS:
            for t in threads:
                d = lock.get((v, shape, t), {})
                if not d:
                    continue
                body.append([v, str(t), f"{d['macq']:.1f}" if "macq" in d else "-",
                             f"{d['rmw']:.3f}" if "rmw" in d else "n/a",
                             f"{100 * d['contended']:.1f} %" if d.get("contended") is not None else "n/a",
                             f"{d['rmw_per_contended']:.2f}" if d.get("contended") else "n/a"])
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        out.append("| " + " | ".join(h.ljust(w) if i < 1 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))) + " |")
        out.append("|" + "|".join("-" * (w + 2) if i < 1 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
        out += ["| " + " | ".join(c.ljust(w) if i < 1 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"
                for cells in body]
        out.append("")
    return "\n".join(out).rstrip()


def collect_signal(run_dir):
    out = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "signal", "*.json"))):
        subject, mode = os.path.basename(path)[: -len(".json")].split(".")
        out.setdefault(subject, {})[mode] = load_json(path)
    return out


def rate(trials, field):
    xs = [t[field] / t["elapsed_s"] for t in trials if t["outcome"] == "completed" and t["elapsed_s"] > 0]
    return median(xs)


def render_signal_table(sig):
    head = ["subject", "completed", "deadlocked", "corrupted", "crashed", "thread pairs/s", "handler pairs/s",
            "handler nullptr", "control: thread pairs/s", "no signals: thread pairs/s"]
    body, details = [], []
    for s in ["anyctx"] + PEERS:
        if s not in sig or "storm" not in sig[s]:
            continue
        storm = sig[s]["storm"]
        c = storm["counts"]
        tp, hp = rate(storm["trials"], "thread_pairs"), rate(storm["trials"], "handler_pairs")
        nul = sum(t["handler_nullptr"] for t in storm["trials"] if t["outcome"] == "completed")
        hall = sum(t["handler_nullptr"] + t["handler_pairs"] for t in storm["trials"] if t["outcome"] == "completed")
        ctrl = rate(sig[s].get("control", {}).get("trials", []), "thread_pairs")
        base = rate(sig[s].get("baseline", {}).get("trials", []), "thread_pairs")
        k = lambda x: "-" if x is None else (f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.1f} k")
        body.append([s, str(c["completed"]), str(c["deadlocked"]), str(c["corrupted"]), str(c["crashed"]), k(tp),
                     k(hp), f"{100.0 * nul / hall:.1f} %" if hall else "-", k(ctrl), k(base)])
        for i, t in enumerate(storm["trials"]):
            details.append(f"  {s} trial {i + 1}: {t['outcome']}: {t['detail']}")
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |" for cells in body]
    first = next(iter(sig.values())).get("storm", {})
    intro = (f"thread {first.get('thread_bytes')} B, handler {first.get('handler_bytes')} B, a signal every "
             f"{first.get('interval_us')} us, {first.get('seconds')} s per trial, watchdog stall "
             f"{first.get('stall_s')} s")
    return intro + "\n" + "\n".join(lines) + "\n" + "\n".join(details)


# Issue 15's pair targets: (row, what, the peers' operation, bound on the
# ratio to the fastest peer at 1 thread).
PAIR_TARGETS = (
    ("page/alloc_pages", "order-0 alloc_pages pair", "malloc(4096)+free", 1.0),
    ("page/alloc_pages_nolock", "order-0 alloc_pages_nolock pair", "calloc(1,4096)+free", 1.0),
    ("small/kmalloc/64", "64 B kmalloc pair", "malloc(64)+free", 1.0),
    ("small/kmalloc_nolock/64", "64 B kmalloc_nolock pair", "malloc(64)+free", 1.25),
)


def targets(rows, lock, peers):
    """[(target, verdict line)]: issue 15's (the pairs against the fastest
    peer at 1 thread, each pair at 2 threads within 10 % of 1 thread, no
    nullptr in a producer/consumer row, pc/alloc_pages ahead of every peer)
    and the lock study's."""
    out = []
    def row(aop, t):
        return next((r for r in rows if r["anyctx_op"] == aop and r["threads"] == t), None)
    verdict = lambda ok: "MET" if ok else "MISSED"
    vs_fastest = lambda r: (f"{fmt_ns(r['anyctx_ns'])} ns vs {r['best']} {fmt_ns(r['peer_ns'][r['best']])} ns, "
                            f"{r['ratio_best']:.2f}x (median of the rounds' ratios "
                            f"{fmt_ratio(r['ratio_paired'][r['best']])}x)")
    for aop, what, peer_op, bound in PAIR_TARGETS:
        one, two = row(aop, 1), row(aop, 2)
        if one and one["ratio_best"] is not None:
            out.append((f"{what} <= {bound:g}x the fastest peer's {peer_op} [1 thr]",
                        f"{verdict(one['ratio_best'] <= bound)}: {vs_fastest(one)}"))
        if one and two:
            growth = two["anyctx_ns"] / one["anyctx_ns"] - 1
            paired = paired_ratio(two["anyctx_rounds"], one["anyctx_rounds"])
            paired_text = "-" if paired is None else f"{100 * (paired - 1):+.1f} %"
            # The peers' same step, for the reader: on a machine whose two
            # vCPUs share a core, every row slows down at 2 threads.
            peer_growth = ", ".join(f"{p} {100 * (two['peer_ns'][p] / one['peer_ns'][p] - 1):+.1f} %"
                                    for p in peers if two["peer_ns"].get(p) and one["peer_ns"].get(p))
            out.append((f"{what} at 2 threads within 10 % of 1 thread",
                        f"{verdict(growth <= 0.10)}: {fmt_ns(two['anyctx_ns'])} ns vs {fmt_ns(one['anyctx_ns'])} ns, "
                        f"{100 * growth:+.1f} % (median of the rounds' ratios {paired_text}; "
                        f"the peers' {peer_op} from 1 to 2 threads: {peer_growth or '-'})"))
    for r in rows:
        if r["anyctx_op"].startswith("prodcons/"):
            nul = r["nullptr_fraction"]
            out.append((f"{short_label(r['anyctx_op'])} returns no nullptr [{r['threads']} thr]",
                        f"{verdict(nul == 0)}: nullptr {100 * nul:.2f} % of the producer's allocations (median of rounds)"))
    pc = row("prodcons/alloc_pages", 2)
    if pc and pc["ratio_best"] is not None:
        out.append(("pc/alloc_pages ahead of every peer [2 thr]",
                    f"{verdict(pc['ratio_best'] < 1.0)}: {vs_fastest(pc)}"))
    for v, name in (("branch_first", "option (b)"), ("spinlock", "option (a)")):
        for think in sorted({k for (_, k, _) in lock}, key=shape_key):
            d = lock.get((v, think, 2), {})
            if "rmw" in d:
                o = lock.get(("original", think, 2), {})
                per = lambda x: f"{x['rmw_per_contended']:.2f}" if x.get("contended") else "-"
                share = lambda x: f"{100 * x['contended']:.1f} %" if x.get("contended") is not None else "-"
                out.append((f"{name} {v} <= 1.05 RMW per acquisition at 2 threads [{think}]",
                            f"{'MET' if d['rmw'] <= 1.05 else 'MISSED'}: {d['rmw']:.3f} ({share(d)} contended, "
                            f"{per(d)} RMW each); original {o.get('rmw', float('nan')):.3f} ({share(o)} contended, "
                            f"{per(o)} RMW each)"))
    return out


def gnuplot(run_dir, values, rows, lock, peers):
    """Writes the data files and the script; renders bench.png. Return: the PNG path or None."""
    gp_dir = os.path.join(run_dir, "plot")
    os.makedirs(gp_dir, exist_ok=True)
    # Panel 1: small pairs, 1 thread, CPU ns vs size.
    series = [("anyctx kmalloc", "anyctx", "small/kmalloc/{}"),
              ("anyctx kmalloc_nolock", "anyctx", "small/kmalloc_nolock/{}")]
    series += [(p, p, "small/malloc/{}") for p in peers]
    with open(os.path.join(gp_dir, "small.dat"), "w") as f:
        f.write("size " + " ".join('"' + s[0] + '"' for s in series) + "\n")
        for n in SIZES:
            vals = [fastest(values.get(subj, {}).get((op.format(n), 1), {})) for _, subj, op in series]
            f.write(f"{n} " + " ".join("NaN" if v is None else f"{v:.3f}" for v in vals) + "\n")
    # Panel 2: page and producer/consumer rows, anyctx vs each peer, 1 thread (pc: 2).
    bars = [("page 4K", "page/alloc_pages", "page/malloc_4096", 1),
            ("page 4K zeroed", "page/alloc_pages_nolock", "page/calloc_4096", 1),
            ("page 4K, 2 thr", "page/alloc_pages", "page/malloc_4096", 2),
            ("pc 64 B", "prodcons/kmalloc/64", "prodcons/malloc/64", 2),
            ("pc 64 B nolock", "prodcons/kmalloc_nolock/64", "prodcons/malloc/64", 2),
            ("pc page", "prodcons/alloc_pages", "prodcons/malloc_4096", 2),
            ("pc page nolock", "prodcons/alloc_pages_nolock", "prodcons/calloc_4096", 2)]
    with open(os.path.join(gp_dir, "pairs.dat"), "w") as f:
        f.write("row anyctx " + " ".join(peers) + "\n")
        for label, aop, pop, t in bars:
            vals = [fastest(values.get("anyctx", {}).get((aop, t), {}))]
            vals += [fastest(values.get(p, {}).get((pop, t), {})) for p in peers]
            f.write(f"\"{label}\" " + " ".join("NaN" if v is None else f"{v:.3f}" for v in vals) + "\n")
    # Panels 3 and 4: lock study, the most contended shape.
    hot = "cs:50/think:100"
    threads = sorted({t for (_, k, t) in lock if k == hot})
    with open(os.path.join(gp_dir, "lock.dat"), "w") as f:
        f.write("# threads " + " ".join(f"{v}_macq {v}_rmw {v}_rmw_per_contended" for v, _ in LOCK_VARIANTS) + "\n")
        for t in threads:
            cells = []
            for v, _ in LOCK_VARIANTS:
                d = lock.get((v, hot, t), {})
                rpc = d.get("rmw_per_contended")
                cells += [f"{d['macq']:.3f}" if "macq" in d else "NaN", f"{d['rmw']:.4f}" if "rmw" in d else "NaN",
                          f"{rpc:.4f}" if rpc else "NaN"]
            f.write(f"{t} " + " ".join(cells) + "\n")
    ncols = 1 + len(peers)
    script = f"""# generated by bench/report.py
set terminal pngcairo size 1600,1100 font "sans,11" noenhanced
set output "{os.path.join(run_dir, 'bench.png')}"
set multiplot layout 2,2 title "anyctx benchmarks: CPU ns per alloc+free pair (minimum of rounds; lower is better)"
set grid ytics
set key top left font ",9"
set title "Small objects, 1 thread"
set logscale x 2
set xlabel "bytes"
set ylabel "CPU ns per pair"
set yrange [0:*]
set key autotitle columnheader
plot for [i=2:{1 + len(series)}] "{gp_dir}/small.dat" using 1:i with linespoints lw 2
unset logscale x
set title "Pages and producer/consumer (pc: 2 threads, free on the other thread)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set xtics rotate by -25 font ",9"
set xlabel ""
set logscale y
set yrange [1:*]
set ylabel "CPU ns per pair (log)"
set key top left autotitle columnheader
plot for [i=2:{1 + ncols}] "{gp_dir}/pairs.dat" using i:xtic(1)
unset logscale y
set key noautotitle
set xtics norotate font ",10"
set style data linespoints
set title "Lock study, cs:50/think:100: acquisitions per second (timing build)"
set xlabel "threads"
set ylabel "M acquisitions/s"
set yrange [0:*]
set xtics 1
plot for [i=0:{len(LOCK_VARIANTS) - 1}] "{gp_dir}/lock.dat" using 1:(column(2+3*i)) lw 2 \\
  title word("{' '.join(v for v, _ in LOCK_VARIANTS)}", i+1)
set title "Lock study, cs:50/think:100: lock-word RMWs (instrumented build)"
set ylabel "RMW attempts"
set yrange [0.95:*]
plot for [i=0:2] "{gp_dir}/lock.dat" using 1:(column(3+3*i)) lw 2 lc i+1 \\
  title word("{' '.join(v for v, _ in LOCK_VARIANTS[:3])}", i+1)." per acquisition", \\
  for [i=0:2] "{gp_dir}/lock.dat" using 1:(column(4+3*i)) lw 2 dt 2 lc i+1 \\
  title word("{' '.join(v for v, _ in LOCK_VARIANTS[:3])}", i+1)." per contended acquisition", \\
  1.05 dt 3 lc rgb "red" title "target 1.05 per acquisition"
unset multiplot
"""
    gp = os.path.join(gp_dir, "bench.gp")
    with open(gp, "w") as f:
        f.write(script)
    try:
        subprocess.run(["gnuplot", gp], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"report: gnuplot failed: {getattr(e, 'stderr', e)}", file=sys.stderr)
        return None
    return os.path.join(run_dir, "bench.png")


def unpack(run_dir):
    """Recreates the per-run files from RUN_DIR/results.json, so that a
    results.json fetched alone (from another machine, or docs/bench/) can be
    re-rendered."""
    doc = load_json(os.path.join(run_dir, "results.json"))
    def dump(rel, obj):
        path = os.path.join(run_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(obj, f)
    dump("machine.json", doc.get("machine", {}))
    for r in doc.get("alloc_runs", []):
        dump(r["file"], r["gbench"])
    for k, v in doc.get("lock_study", {}).items():
        dump(f"lock/{k}.json", v)
    if doc.get("lock_perf"):
        with open(os.path.join(run_dir, "lock", "perf.txt"), "w") as f:
            f.write(doc["lock_perf"])
    for subject, modes in doc.get("signal", {}).items():
        for mode, v in modes.items():
            dump(f"signal/{subject}.{mode}.json", v)
    for k, v in doc.get("micro", {}).items():
        dump(f"micro/{k}.json", v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--docs", help="copy results.json, results.md and bench.png here")
    args = ap.parse_args()
    run_dir = args.run_dir
    if not os.path.isdir(os.path.join(run_dir, "alloc")) and os.path.exists(os.path.join(run_dir, "results.json")):
        unpack(run_dir)

    machine = load_json(os.path.join(run_dir, "machine.json")) if os.path.exists(
        os.path.join(run_dir, "machine.json")) else {}
    values, raw_alloc, failed = collect_alloc(run_dir)
    rows, peers = ratio_table(values, failed)
    lock = collect_lock(run_dir)
    sig = collect_signal(run_dir)

    md = []
    md.append(f"# ci/bench results\n")
    for k in ("date", "cpu", "nproc", "commit", "load_start", "load_end", "rounds", "min_time", "pair_threads"):
        if k in machine:
            md.append(f"- {k}: {machine[k]}")
    md.append("")
    md.append("## Ratio table: anyctx against each peer (CPU ns per alloc+free pair, minimum of rounds)\n")
    md.append("Each peer cell is `ns (anyctx / peer)`: below 1 anyctx is faster. `x fastest` is anyctx against "
              "the fastest peer of that row. Every ns is the subject's minimum over the rounds (the machine's "
              "speed drifts by up to half within seconds, which only adds time), every ratio the two minima's; "
              "the targets also give the median of the ratios taken within each round.\n")
    md.append(render_ratio_table(rows, peers))
    if any(r["nullptr_fraction"] > 0 for r in rows):
        md.append("\n`[nullptr N %]`: that share of anyctx's allocations in the row returned nullptr (no memory "
                  "in this context), so its time is not the cost of a pair; see docs/benchmarks.md.")
    refs = {op: fastest(v) for (op, t), v in values.get("anyctx", {}).items() if op.startswith("ref/")}
    if refs:
        md.append("\nReference costs on this machine (anyctx binary, CPU ns): " + ", ".join(
            f"{op[4:]} {fmt_ns(v)}" for op, v in sorted(refs.items())) + ".")
    md.append("")
    md.append("## Targets\n")
    for what, verdict in targets(rows, lock, peers):
        md.append(f"- {what}: **{verdict}**")
    md.append("")
    if lock:
        md.append("## Lock study\n")
        md.append("M acq/s from the timing build (lock_study); the RMW columns from the instrumented build "
                  "(lock_study_rmw): lock-word RMW attempts per acquisition, the share of acquisitions whose first "
                  "RMW failed, and the RMWs such a contended acquisition made in all.\n")
        md.append(render_lock_table(lock))
        md.append("")
    perf = os.path.join(run_dir, "lock", "perf.txt")
    if os.path.exists(perf):
        md.append("## Cache misses (perf stat)\n")
        with open(perf) as f:
            md.append(f.read().rstrip())
        md.append("")
    if sig:
        md.append("## Signal context: allocation from a signal handler\n")
        md.append(render_signal_table(sig))
        md.append("")
    text = "\n".join(md) + "\n"
    with open(os.path.join(run_dir, "results.md"), "w") as f:
        f.write(text)
    print(text)

    png = gnuplot(run_dir, values, rows, lock, peers)
    combined = {
        "machine": machine,
        "metric": "cpu_time per alloc+free pair, ns; minimum over rounds; ratios of minima (ratio_paired: median of per-round ratios)",
        "ratio_table": [dict(r, peer_ns=r["peer_ns"], ratio=r["ratio"]) for r in rows],
        "targets": [{"target": w, "verdict": v} for w, v in targets(rows, lock, peers)],
        "alloc_runs": raw_alloc,
        "lock_study": {k: load_json(os.path.join(run_dir, "lock", k + ".json"))
                       for k in ("lock_study", "lock_study_rmw")
                       if os.path.exists(os.path.join(run_dir, "lock", k + ".json"))},
        "lock_perf": open(perf).read() if os.path.exists(perf) else None,
        "signal": sig,
        "micro": {os.path.basename(p)[:-5]: load_json(p) for p in sorted(glob.glob(os.path.join(run_dir, "micro", "*.json")))},
    }
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(combined, f, separators=(",", ":"))
    if args.docs:
        os.makedirs(args.docs, exist_ok=True)
        for name in ("results.json", "results.md") + (("bench.png",) if png else ()):
            shutil.copyfile(os.path.join(run_dir, name), os.path.join(args.docs, name))
        print(f"report: copied results.json, results.md{', bench.png' if png else ''} to {args.docs}")
    if png:
        print(f"report: plot {png}")


if __name__ == "__main__":
    main()
