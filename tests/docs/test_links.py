"""Every relative link of the README and docs/ reaches a file, and a ``#section`` of a Markdown file
reaches one of its headings (GitHub's anchors: lower case, punctuation dropped, spaces to dashes)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted(REPO.glob("docs/*.md")) + [REPO / "README.md"]


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)  # no headings in code blocks
    return {github_anchor(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, re.M)}


def test_anchor_rule_on_a_heading_with_punctuation():
    assert github_anchor("Is the semi-supervised part acting? Read the diagnostics") == \
        "is-the-semi-supervised-part-acting-read-the-diagnostics"
    assert github_anchor("1. Semi-supervised study on real data: AI4Mars MSL") == \
        "1-semi-supervised-study-on-real-data-ai4mars-msl"


def test_every_relative_link_and_section_exists():
    broken = []
    for page in PAGES:
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", link):
                continue  # http(s), mailto: not checked offline
            path, _, section = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                broken.append(f"{page.relative_to(REPO)}: {link} (no such file)")
            elif section and target.suffix == ".md" and section not in anchors(target):
                broken.append(f"{page.relative_to(REPO)}: {link} (no such section)")
    assert not broken, "\n".join(broken)
