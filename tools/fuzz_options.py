#!/usr/bin/env python3
"""fuzz_options: the libFuzzer flags a fuzz target's NAME.options file sets.

    fuzz_options.py FILE

prints each "key = value" of the file's [libfuzzer] section as -key=value,
one per line, in file order; other sections (OSS-Fuzz's [asan], ...) are
not libFuzzer flags and are skipped. A missing file prints nothing: a
target may have none. A file that is not an options file (a line outside
any section, a line that is neither a section nor "key = value", a key
twice) is an error that names the file and the line: exit status 2.

ci/fuzz and ci/mutants pass the flags before their own, so a flag they set
(-timeout, -max_total_time) wins. The format is OSS-Fuzz's, which finds
the file beside the binary: "#" starts a comment, keys are libFuzzer flag
names without the dash.
"""

import re
import sys

SECTION = re.compile(r"^\[([^\]]+)\]$")
SETTING = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(\S(?:.*\S)?)$")


class OptionsError(Exception):
    pass


def libfuzzer_flags(text, name="options"):
    """Return: the [libfuzzer] settings of `text` as ["-key=value", ...]."""
    flags, section, seen = [], None, set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = SECTION.match(line)
        if m:
            section = m.group(1).strip().lower()
            seen = set()
            continue
        m = SETTING.match(line)
        if not m:
            raise OptionsError('%s:%d: expected "[section]" or "key = value", got %r' % (name, number, raw))
        if section is None:
            raise OptionsError("%s:%d: %r comes before any [section]" % (name, number, raw))
        key, value = m.groups()
        if key in seen:
            raise OptionsError("%s:%d: %s is set twice in [%s]" % (name, number, key, section))
        seen.add(key)
        if section == "libfuzzer":
            flags.append("-%s=%s" % (key, value))
    return flags


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: fuzz_options.py FILE\n")
        return 2
    try:
        with open(args[0], encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return 0
    try:
        for flag in libfuzzer_flags(text, args[0]):
            print(flag)
    except OptionsError as e:
        sys.stderr.write("fuzz_options: %s\n" % e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
