#!/usr/bin/env python3
"""coverage_summary: line coverage per directory, from llvm-cov's export.

    llvm-cov export -summary-only ... | coverage_summary.py --root DIR [FILE]

reads the JSON that `llvm-cov export -summary-only` writes (FILE, or
standard input) and prints one line per directory of the covered files,
sorted by directory, then a total line:

    src/anyctx/page           87.3% lines  (1234 of 1413)
    total                     80.1% lines  (5678 of 7089)

A file's directory is its path relative to DIR (made absolute: llvm-cov
names the files by absolute paths) without its last component; a file
outside DIR keeps its absolute path. Input that is not such an export (not
JSON, no "data" list, a file without a "lines" summary) is an error that
says what was missing: exit status 2. `ci/fuzz --coverage` prints this
(with DIR the repository) after its HTML report.
"""

import argparse
import json
import os
import sys


class ExportError(Exception):
    pass


def per_directory(export, root):
    """Return: {directory: (covered, count)} over the files of `export`."""
    if not isinstance(export, dict) or not isinstance(export.get("data"), list):
        raise ExportError('no "data" list: not an llvm-cov export')
    prefix = root.rstrip("/") + "/"
    dirs = {}
    for unit in export["data"]:
        files = unit.get("files") if isinstance(unit, dict) else None
        if not isinstance(files, list):
            raise ExportError('an entry of "data" has no "files" list')
        for f in files:
            name = f.get("filename") if isinstance(f, dict) else None
            if not isinstance(name, str):
                raise ExportError('a file entry without a "filename"')
            try:
                lines = f["summary"]["lines"]
                count, covered = int(lines["count"]), int(lines["covered"])
            except (KeyError, TypeError, ValueError):
                raise ExportError("%s: no summary.lines.count and .covered" % name) from None
            if name.startswith(prefix):
                name = name[len(prefix):]
            d = os.path.dirname(name)
            c, n = dirs.get(d, (0, 0))
            dirs[d] = (c + covered, n + count)
    return dirs


def line(label, covered, count):
    percent = 100.0 * covered / count if count else 0.0
    return "%-24s %6.1f%% lines  (%d of %d)" % (label, percent, covered, count)


def report(dirs):
    """Return: the lines to print for `dirs` (see per_directory)."""
    out = [line(d, c, n) for d, (c, n) in sorted(dirs.items())]
    out.append(line("total", sum(c for c, _ in dirs.values()), sum(n for _, n in dirs.values())))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="line coverage per directory from llvm-cov export -summary-only")
    p.add_argument("--root", required=True, help="the source root the directories are relative to")
    p.add_argument("file", nargs="?", help="the export (default: standard input)")
    args = p.parse_args(argv)
    try:
        if args.file:
            with open(args.file, encoding="utf-8") as fh:
                text = fh.read()
        else:
            text = sys.stdin.read()
        try:
            export = json.loads(text)
        except ValueError as e:
            raise ExportError("not JSON (%s)" % e) from None
        for out in report(per_directory(export, os.path.abspath(args.root))):
            print(out)
    except (ExportError, OSError) as e:
        sys.stderr.write("coverage_summary: %s: %s\n" % (args.file or "standard input", e))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
