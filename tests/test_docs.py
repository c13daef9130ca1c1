"""The README and docs/ hold together: every link resolves, every trainer is in the README's method table."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import nnunet_uda.training

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # a web address
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists() and REPO in linked.parents, f"{page.name}: {target} is not a file of the repository"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: {target} names no heading of {linked.name}"


def test_every_trainer_is_in_the_method_table():
    readme = (REPO / "README.md").read_text()
    methods = readme[readme.index("\n## Methods"):readme.index("\n## ", readme.index("\n## Methods") + 1)]
    table = "\n".join(line for line in methods.splitlines() if line.startswith("|"))
    named = set(re.findall(r"`(nnUNetTrainer\w+)`", table))
    assert set(nnunet_uda.training.TRAINERS) <= named, sorted(set(nnunet_uda.training.TRAINERS) - named)
