"""The book's chapters 2-5 as scripts that walk its examples in order with this project's classes and print what the
book prints: ``python -m book.ch02`` ... ``python -m book.ch05`` from the repository root. The teaching scaffolds
(``DummyGPTModel``, ``ExampleDeepNeuralNetwork``, ...) live in these scripts, not in the ``gpt`` package.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The book's short story; tests and scripts look for it in ../shared/data beside the checkout, or $GPT_SHARED_DATA.
VERDICT = Path(os.environ.get("GPT_SHARED_DATA", ROOT.parent / "shared" / "data")) / "the-verdict.txt"
# When the story is absent: its first sentence and the sentence chapter 2 encodes, so every example still runs.
SHORT_TEXT = (
    "I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow enough--so it was no great "
    "surprise to me to hear that, in the height of his glory, he had dropped his painting, married a rich widow, "
    'and established himself in a villa on the Riviera. "It\'s the last he painted, you know," Mrs. Gisburn said '
    "with pardonable pride."
)


def the_verdict() -> str:
    """Edith Wharton's "The Verdict" when it is on disk (never fetched), else a short built-in excerpt."""
    if VERDICT.is_file():
        return VERDICT.read_text(encoding="utf-8")
    print(f"({VERDICT} not found: using a short built-in excerpt, so the counts differ from the book's)")
    return SHORT_TEXT


def section(title: str) -> None:
    print(f"\n=== {title}")
