#!/usr/bin/env python3
"""Checks the relative links of the user guide and the README (`make docs`, after `mdbook build`).

Every relative link in guide/src/*.md and the given Markdown files must name a file that exists
(resolved from the linking file, as GitHub and the built book both resolve it), and every
`#anchor` must name a heading of its target: for a page of the book, an id in the page mdBook
built; for another Markdown file, a heading's GitHub-style slug. Web links (http, https, mailto)
are not fetched: CI has no internet, and an outside page's fate is not a defect of this repository.

Why a script and not mdbook-linkcheck: that backend was last released for mdBook 0.4 and does not
run under mdBook 0.5, and this check is fifty lines.

Usage: scripts/check-links.py GUIDE_DIR [FILE.md ...]; exits 1 and lists every broken link.
"""
import html.parser
import pathlib
import re
import sys

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")


def links(path):
    """(line number, target) of each Markdown link outside code blocks and inline code."""
    in_fence = False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line.lstrip()):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for m in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            yield n, m.group(1)


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]*>", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def md_anchors(path):
    seen, out = {}, set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.lstrip()):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            s = slug(line.lstrip("#"))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


class Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        self.ids.update(v for k, v in attrs if k == "id" and v)


def html_anchors(path):
    p = Ids()
    p.feed(path.read_text(encoding="utf-8"))
    return p.ids


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    guide = pathlib.Path(sys.argv[1]).resolve()
    src, built = guide / "src", guide / "book"
    if not (built / "index.html").exists():
        sys.exit(f"{built} has no index.html: run `mdbook build {guide}` first")
    files = sorted(src.rglob("*.md")) + [pathlib.Path(f).resolve() for f in sys.argv[2:]]
    broken, checked = [], 0
    for f in files:
        for n, target in links(f):
            if re.match(r"^[a-z]+:", target):
                continue
            checked += 1
            path, _, anchor = target.partition("#")
            dest = (f.parent / path).resolve() if path else f
            where = f"{f.relative_to(guide.parent)}:{n}: {target}"
            if not dest.exists():
                broken.append(f"{where}: no such file {dest}")
                continue
            if not anchor:
                continue
            if dest.suffix == ".md" and src in dest.parents:
                page = built / dest.relative_to(src).with_suffix(".html")
                ids = html_anchors(page) if page.exists() else set()
            elif dest.suffix == ".md":
                ids = md_anchors(dest)
            else:
                continue
            if anchor not in ids:
                broken.append(f"{where}: no heading '#{anchor}' in {dest.name}")
    for b in broken:
        print(b)
    print(f"check-links: {checked} relative links in {len(files)} files, {len(broken)} broken")
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
