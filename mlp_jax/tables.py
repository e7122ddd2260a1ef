"""Plain-text tables, the one layout of every report the library prints (gradient check,
diagnosis, the command line's summaries)."""

from typing import List, Sequence


def text_table(rows: Sequence[Sequence], rule: bool = True) -> List[str]:
  """Lines of a plain-text table, columns left-aligned to their widest cell; with `rule`, a
  dashed line under the first (header) row."""
  rows = [[str(cell) for cell in row] for row in rows]
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
  if rule:
    lines.insert(1, "  ".join("-" * w for w in widths))
  return lines


def text_block(rows: Sequence[Sequence]) -> str:
  """A table without a header rule, as one string: the command line's summaries."""
  return "\n".join(text_table(rows, rule=False))
