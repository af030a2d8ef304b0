"""README.md and docs/: one screen of README, every relative link and anchor resolves, each bench
figure on one page only, and the counts the pages give are the tests' own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
DOCS = PROJECT / "docs"
PAGES = [PROJECT / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _prose(text: str) -> str:
    """The page without its code blocks (a link or heading inside one is not one)."""
    return FENCE.sub("", text)


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to `-`,
    a repeated heading numbered `-1`, `-2`, ..."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n, unique = 0, slug
        while unique in found:
            n += 1
            unique = f"{slug}-{n}"
        found.add(unique)
    return found


def links(page: Path) -> list[str]:
    return [a or b for a, b in LINK.findall(_prose(page.read_text()))]


def test_the_readme_is_one_screen_then_links() -> None:
    readme = (PROJECT / "README.md").read_text()
    assert len(readme.splitlines()) < 300
    for command in ("make demo", "make test"):
        assert f"\n{command}   #" in readme, command
    for url in ("http://127.0.0.1:8080/plugin/mlcycle", "http://127.0.0.1:5000", "/v1/pipelines/churn/predict"):
        assert url in readme, url
    for page in DOCS.glob("*.md"):
        assert f"(docs/{page.name}" in readme, f"the README links no section to docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(PROJECT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {file.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def _figures(text: str) -> set[str]:
    """Measured figures: ratios (`1.47x`, `x37.5`), times (`34.5 s`, `0.42 ms`), rates (`req/s`)."""
    unit = r"\d[\d,]*(?:\.\d+)?\s?(?:ms|us|s|req/s|vectors/s|MiB|GB)\b"
    ratio = r"\d+\.\d+x\b|\bx\d+\.\d+"
    return set(re.findall(f"{ratio}|{unit}", _prose(text)))


def test_each_bench_figure_is_on_the_performance_page_only() -> None:
    bench = _figures((DOCS / "performance.md").read_text())
    assert len(bench) > 20, bench  # the page still holds the bench tables
    for page in PAGES:
        if page.name in ("performance.md", "configuration.md"):
            continue
        twice = bench & _figures(page.read_text())
        assert not twice, f"{page.name} repeats {sorted(twice)} of docs/performance.md: link to it instead"


def test_the_bad_input_count_is_the_catalogues() -> None:
    import tests.integration.test_bad_inputs as catalogue

    bad = [c for c in catalogue.DATA if c.code] + list(catalogue.SPECS)
    valid = [c for c in catalogue.DATA if not c.code] + ["the large CSV read in bounded memory"]
    text = " ".join((DOCS / "reliability.md").read_text().split())
    said = f"**{len(bad)} bad inputs tried, {len(bad)} refused with a clear error"
    assert said in text and f"{len(valid)} awkward but valid inputs read correctly" in text, said
