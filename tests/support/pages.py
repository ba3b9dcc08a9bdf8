"""Reading a report page as a reader does: its tables by caption, its visible text."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pandas as pd


class _Tables(HTMLParser):
    """Every <table> of a page: its caption and its rows of cell texts (header row first)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self._row: list[str] | None = None
        self._cell: str | None = None
        self._caption = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append({"caption": "", "rows": []})
        elif tag == "caption":
            self._caption = True
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "caption":
            self._caption = False
        elif tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append(self._cell.strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1]["rows"].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._caption:
            self.tables[-1]["caption"] += data
        elif self._cell is not None:
            self._cell += data


def _without_scripts(html: str) -> str:
    # The inlined bundles are megabytes of script HTMLParser crawls through slowly.
    return re.sub(r"<script\b.*?</script>", "", html, flags=re.DOTALL | re.IGNORECASE)


def table(html: str, caption: str) -> pd.DataFrame:
    """The one table whose caption starts with ``caption``; the first column is the index when
    its header is empty (row headers)."""
    parser = _Tables()
    parser.feed(_without_scripts(html))
    [found] = [t for t in parser.tables if t["caption"].startswith(caption)]
    header, *rows = found["rows"]
    frame = pd.DataFrame(rows, columns=header)
    return frame.set_index("") if header[0] == "" else frame


def _text(html: str) -> str:
    parser = HTMLParser()
    chunks: list[str] = []
    parser.handle_data = chunks.append  # type: ignore[method-assign]
    parser.feed(_without_scripts(html))
    return " ".join(" ".join(chunks).split())
