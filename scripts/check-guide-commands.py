#!/usr/bin/env python3
"""Checks that every kdlab command the user guide shows would be accepted (`make docs`).

Running the guide's commands for real means training studies (hours); what goes stale is cheaper
to check: each `kdlab …` command in a code block or an inline code span of guide/src/*.md must
name a subcommand that exists and only flags that subcommand's `--help` lists.

Usage: scripts/check-guide-commands.py KDLAB GUIDE_DIR; exits 1 and lists every bad command.
"""
import pathlib
import re
import shlex
import subprocess
import sys

FENCE = re.compile(r"^\s*(```|~~~)")


def commands(path):
    """(line number, the command's words) of each `kdlab …` the page shows."""
    in_fence = False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        spans = [line] if in_fence else re.findall(r"`([^`]*)`", line)
        for span in spans:
            span = re.sub(r"^\s*\$\s+", "", span.split("#")[0] if in_fence else span)
            m = re.match(r"^\s*(?:eval \"\$\()?kdlab\s+(.*)", span)
            if not m:
                continue
            try:
                words = shlex.split(m.group(1).split("|")[0].split("&&")[0])
            except ValueError:
                words = m.group(1).split()
            yield n, words


_help = {}


def help_of(kdlab, path):
    key = tuple(path)
    if key not in _help:
        r = subprocess.run([kdlab, *path, "--help"], capture_output=True, text=True)
        _help[key] = r.stdout if r.returncode == 0 else None
    return _help[key]


def accepts(kdlab, path, flag):
    """Whether clap knows a flag --help does not list (an alias): `FLAG=x --help` then prints the
    help or complains about the value, never runs the command, and names an unknown flag."""
    r = subprocess.run([kdlab, *path, f"{flag}=x", "--help"], capture_output=True, text=True)
    return f"unexpected argument '{flag}" not in r.stderr


def subcommands(help_text):
    out, on = set(), False
    for line in help_text.splitlines():
        if line.startswith("Commands:"):
            on = True
        elif on and re.match(r"^\S", line):
            on = False
        elif on and (m := re.match(r"^\s{2}(\S+)", line)):
            out.add(m.group(1))
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    kdlab, guide = sys.argv[1], pathlib.Path(sys.argv[2])
    bad, checked = [], 0
    for page in sorted((guide / "src").rglob("*.md")):
        for n, words in commands(page):
            checked += 1
            path = []
            text = help_of(kdlab, path)
            # A hidden subcommand (sweep-run) is not listed, but has its own --help.
            while words and re.match(r"^[a-z]", words[0]) and (
                words[0] in subcommands(text) or (not path and help_of(kdlab, [words[0]]))
            ):
                path.append(words.pop(0))
                text = help_of(kdlab, path)
            where = f"{page}:{n}: kdlab {' '.join(path + words)}"
            if not path:
                if words and words[0] not in ("--help", "--version", "-h", "-V") and not words[0].startswith("<"):
                    bad.append(f"{where}: '{words[0]}' is not a kdlab command")
                continue
            for w in words:
                flag = w.split("=")[0]
                if re.match(r"^--[a-z]", flag) and not re.search(rf"(^|[\s,]){re.escape(flag)}([\s=<,]|$)", text, re.M):
                    if not accepts(kdlab, path, flag):
                        bad.append(f"{where}: kdlab {' '.join(path)} has no flag {flag}")
    for b in bad:
        print(b)
    print(f"check-guide-commands: {checked} kdlab commands, {len(bad)} bad")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
