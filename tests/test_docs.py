"""The docs: every relative link resolves, and the repository speaks of itself, not of how it was written."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)

# The word for a sitting of work (WORD) is allowed only in code's own meanings: a requests or onnxruntime
# client object and the names holding one, pytest's widest fixture scope, a new process group. The tests
# spell it WORD so that this file passes its own check.
WORD = "sess" + "ion"
WRITING_TALK = re.compile(rf"\b{WORD}s?\b", re.I)
W = WORD[1:]
CODE_MEANINGS = re.compile(
    rf"requests\.S{W}\b|\bInferenceS{W}\b|scope=\"s{W}\"|start_new_s{W}|\bsetsid\b"
    rf"|\b\w+\.s{W}\b|\bs{W}(?:\(\))?\.\w+\(|\bas s{W}\b|\bs{W} = |= s{W}$|\"s{W}\"|\bdef s{W}\(\)"
    rf"|\"s{W}\.[\w.]+\""  # an onnxruntime option's name: "s{W}.intra_op.allow_spinning"
)
ISSUE_NUMBER = re.compile(r"\bissue [0-9]+", re.I)


@cache
def tracked(*patterns: str) -> tuple[Path, ...]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return tuple(REPO_ROOT / line for line in out.stdout.splitlines() if (REPO_ROOT / line).is_file())


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, markup and punctuation dropped (but - and _), spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(doc: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", doc.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def links(doc: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", doc.read_text()))
    return LINK.findall(text)


def broken_links(doc: Path) -> list[str]:
    broken = []
    for target in links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http(s), mailto and other schemes
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor.lower() not in anchors(resolved):
            shown = resolved.relative_to(REPO_ROOT) if resolved.is_relative_to(REPO_ROOT) else resolved.name
            broken.append(f"{target} (no heading #{anchor} in {shown})")
    return broken


def test_the_docs_link_to_what_exists():
    docs = tracked("*.md")
    assert REPO_ROOT / "README.md" in docs and REPO_ROOT / "docs" / "accuracy.md" in docs
    broken = {str(doc.relative_to(REPO_ROOT)): found for doc in docs if (found := broken_links(doc))}
    assert not broken, broken


def test_the_link_checker_finds_broken_links_and_anchors(tmp_path):
    (tmp_path / "other.md").write_text("# Other doc\n\n## The shipped model (2026-12-03): `six` views\n")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Title\n\n[ok](other.md) [ok](other.md#the-shipped-model-2026-12-03-six-views) [ok](#title)\n"
        "![ok](other.md) [web](https://example.com/x) [mail](mailto:a@b.c)\n"
        "[gone](missing.md) [bad anchor](other.md#nothing) ![gone](img.png)\n"
        "```\n[in code](not-checked.md)\n```\n`[inline](not-checked.md)`\n"
    )
    assert broken_links(doc) == ["missing.md (no such file)", "other.md#nothing (no heading #nothing in other.md)",
                                 "img.png (no such file)"]


@pytest.mark.parametrize("line, allowed", [
    ("with requests.S{w}() as s{w}:", True),
    ("reply = s{w}.post(url, data=body)", True),
    ('if not hasattr(local, "s{w}"):', True),
    ("local.s{w} = requests.S{w}()", True),
    ("local.s{w} = s{w}", True),
    ('@pytest.fixture(scope="s{w}")', True),
    ("subprocess.Popen(cmd, start_new_s{w}=True)", True),
    ("self.s{w} = ort.InferenceS{w}(path)", True),
    ('options.add_s{w}_config_entry("s{w}.intra_op.allow_spinning", "0")', True),
    ("measured in s{w} 22 on that machine", False),
    ("gathered over several s{w}s", False),
    ("the EPYC some s{w}s get", False),
])
def test_the_word_rule_tells_code_from_prose(line, allowed):
    line = line.format(w=WORD[1:])
    assert (not WRITING_TALK.search(CODE_MEANINGS.sub("", line))) == allowed


def test_no_talk_of_the_writing_and_no_issue_numbers():
    """The repository describes the project: name the machine, the date or the commit instead."""
    talk, issues = [], []
    for path in tracked():
        try:
            text = path.read_text()
        except UnicodeDecodeError:  # a model or a record: binary
            continue
        for number, line in enumerate(text.splitlines(), 1):
            where = f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()[:100]}"
            if path.suffix in {".md", ".py"} and WRITING_TALK.search(CODE_MEANINGS.sub("", line)):
                talk.append(where)
            if ISSUE_NUMBER.search(line):
                issues.append(where)
    assert not talk, talk
    assert not issues, issues
