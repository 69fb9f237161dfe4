#!/usr/bin/env python3
"""Check a built HTML site offline: every local link resolves, nothing loads from the network.

Usage: ``python .ci/check_site.py [docs/_build/html]``.  Exit status 1 with one line per
problem, 0 with a one-line summary.

- every local ``href``/``src`` (``<a>``, ``<link>``, ``<script>``, ``<img>``, ``<source>``,
  ``<iframe>``) resolves to a file of the site, and a ``#fragment`` to an ``id`` (or a
  ``name``) in the target page;
- no page loads a script, a style sheet, a font, an image or a frame from an ``http(s)://``
  or protocol-relative ``//`` URL; no style sheet of the site imports or ``url()``s one;
- links to other sites (``<a href="https://...">``) are allowed and not followed.

Standard library only.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

#: (tag, attribute) pairs that make the browser fetch something when the page loads
LOADS = {("script", "src"), ("link", "href"), ("img", "src"), ("source", "src"), ("iframe", "src"),
         ("embed", "src"), ("video", "src"), ("audio", "src"), ("img", "srcset"), ("source", "srcset")}
#: ``<link rel=...>`` values that are navigation, not a load
LINK_NAV = {"canonical", "next", "prev", "search", "index", "author", "license", "help", "alternate"}
REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.I)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)
CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])([^'")\s]+)""", re.I)


class Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str, str, dict]] = []  # (tag, attr, value, attrs)

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        for key in ("id", "name"):
            if a.get(key):
                self.ids.add(a[key])
        for attr in ("href", "src", "srcset"):
            if attr in a:
                self.refs.append((tag, attr, a[attr].strip(), a))

    handle_startendtag = handle_starttag


def parse(path: Path, cache: dict) -> Page:
    if path not in cache:
        p = Page()
        p.feed(path.read_text(encoding="utf-8", errors="replace"))
        cache[path] = p
    return cache[path]


def check(root: Path) -> tuple[list[str], int, int]:
    root = root.resolve()
    problems: list[str] = []
    cache: dict[Path, Page] = {}
    # the pages (not the theme's Jinja templates that Sphinx copies into _static/)
    pages = sorted(p for p in root.rglob("*.html") if "_static" not in p.relative_to(root).parts)
    n_links = 0
    for page in pages:
        rel = page.relative_to(root)
        for tag, attr, value, attrs in parse(page, cache).refs:
            if not value:
                continue
            if attr == "srcset":
                values = [v.strip().split()[0] for v in value.split(",") if v.strip()]
            else:
                values = [value]
            for v in values:
                n_links += 1
                loads = (tag, attr) in LOADS and not (
                    tag == "link" and set(attrs.get("rel", "").lower().split()) & LINK_NAV)
                if REMOTE.match(v) or (SCHEME.match(v) and not v.lower().startswith(("data:", "file:"))):
                    if loads and not v.lower().startswith(("data:", "mailto:", "javascript:")):
                        problems.append(f"{rel}: <{tag} {attr}> loads from the network: {v}")
                    continue
                if v.startswith("data:"):
                    continue
                parts = urlsplit(v)
                target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
                if target.is_dir():
                    target = target / "index.html"
                if not target.is_file():
                    problems.append(f"{rel}: <{tag} {attr}> points to a missing file: {v}")
                    continue
                if root not in target.parents and target != root:
                    problems.append(f"{rel}: <{tag} {attr}> points outside the site: {v}")
                    continue
                frag = unquote(parts.fragment)
                if frag and target.suffix == ".html" and frag not in parse(target, cache).ids:
                    problems.append(f"{rel}: <{tag} {attr}> names a missing anchor: {v}")
    for css in sorted(root.rglob("*.css")):
        text = css.read_text(encoding="utf-8", errors="replace")
        for m in CSS_URL.finditer(text):
            u = m.group(1)
            if REMOTE.match(u) or u.lower().startswith(("http:", "https:")):
                problems.append(f"{css.relative_to(root)}: loads from the network: {u}")
    return problems, len(pages), n_links


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "docs/_build/html")
    if not (root / "index.html").is_file():
        print(f"check_site: no index.html under {root}", file=sys.stderr)
        return 2
    problems, n_pages, n_links = check(root)
    for p in problems:
        print(p)
    if problems:
        print(f"check_site: {len(problems)} problem(s) in {n_pages} pages", file=sys.stderr)
        return 1
    print(f"check_site: {n_pages} pages, {n_links} links and loads checked: every local one resolves, "
          "nothing loads from the network")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
