"""documentation/troubleshooting.md quotes messages the code really prints, so a reworded error cannot leave a stale
entry behind."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import automedsam

PACKAGE = Path(automedsam.__file__).parent
PAGE = PACKAGE.parent / "documentation" / "troubleshooting.md"
PLACEHOLDER = "…"


def message_texts() -> list[str]:
    """Every string literal of the package; the variable parts of f-strings become PLACEHOLDER."""
    texts = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                texts.append("".join(part.value if isinstance(part, ast.Constant) else PLACEHOLDER
                                     for part in node.values))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                texts.append(node.value)
    return texts


def documented_messages() -> list[str]:
    """The backticked fragments in the first column of the page's tables (one cell may quote several)."""
    rows = [line for line in PAGE.read_text().splitlines() if line.startswith("| `")]
    return [fragment for row in rows for fragment in re.findall(r"`([^`]+)`", row.split(" | ")[0])]


def test_every_documented_message_is_printed_by_the_code():
    texts = message_texts()
    documented = documented_messages()
    assert len(documented) > 60
    stale = [message for message in documented
             if not all(any(piece.strip() in text for text in texts)
                        for piece in message.split(PLACEHOLDER) if piece.strip())]
    assert stale == []
