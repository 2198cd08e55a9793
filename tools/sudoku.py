"""4x4 Sudoku completion: the data recipe and checker of models/sudoku.

A puzzle is a 4x4 grid (digits 1-4, each row, column and 2x2 box holding each digit once) with some
cells blank; every puzzle here has exactly one solution. Prompt: the 16 cells row by row, `.` for a
blank, then `=`; answer: the 16 digits of the solution, a newline, then eos up to GEN_LENGTH
positions. Blank cells depend on one another (a cell is often fixed only once another is filled),
so committing many cells in one step guesses where one-token-per-step decoding deduces.

Puzzles: a solution grid uniform over all 288 grids, its cells removed in a random order while the
solution stays unique, down to a clue count drawn uniformly from CLUES (it stops earlier at a
minimal puzzle). Held out: every puzzle whose string has `is_held_out(puzzle)` (a multiplicative
hash, 10% of puzzles) is never a training prompt; held-out prompts use only those.
"""
from __future__ import annotations

import itertools
from typing import List, Tuple

import numpy as np

CHARS = "1234.=\n"   # tokenizer characters (ids 0..6), eos 7, mask 8
GEN_LENGTH = 24       # 16 digits + newline + 7 eos
CLUES = (4, 8)        # clue counts drawn uniformly from this closed range
BOXES = [[r * 4 + c for r in rows for c in cols] for rows in ((0, 1), (2, 3)) for cols in ((0, 1), (2, 3))]
UNITS = [[r * 4 + c for c in range(4)] for r in range(4)] + [[r * 4 + c for r in range(4)] for c in range(4)] + BOXES


def is_valid_grid(cells) -> bool:
    """16 digits 1-4 (ints or characters) forming a solved grid."""
    cells = [int(c) for c in cells] if all(str(c) in "1234" for c in cells) else None
    return cells is not None and len(cells) == 16 and all(sorted(cells[i] for i in u) == [1, 2, 3, 4] for u in UNITS)


def _all_grids() -> np.ndarray:
    """The 288 solved grids: rows built one at a time with distinct columns, then the boxes checked."""
    grids = [()]
    for r in range(4):
        grids = [g + row for g in grids for row in itertools.permutations(range(1, 5))
                 if all(row[c] not in g[c::4] for c in range(4))]
    return np.array([g for g in grids if is_valid_grid(g)], dtype=np.int8)


GRIDS = _all_grids()  # [288, 16]


def solutions(puzzle: str) -> np.ndarray:
    """Every grid consistent with `puzzle`'s clues, [n, 16]."""
    p = np.array([0 if ch == "." else int(ch) for ch in puzzle], dtype=np.int8)
    return GRIDS[((GRIDS == p) | (p == 0)).all(1)]


def is_held_out(puzzle: str) -> bool:
    """A pseudo-random 10% of puzzle strings (Knuth multiplicative hash of the base-5 cells)."""
    v = 0
    for ch in puzzle:
        v = v * 5 + (0 if ch == "." else int(ch))
    return ((v + 1) * 2654435761 % 2 ** 32) * 10 // 2 ** 32 == 0


def make_puzzle(rng: np.random.Generator) -> Tuple[str, str]:
    """(puzzle, solution) strings of 16 cells: unique solution, CLUES[0]..CLUES[1] clues."""
    grid = GRIDS[rng.integers(len(GRIDS))]
    target = int(rng.integers(CLUES[0], CLUES[1] + 1))
    keep = np.ones(16, dtype=bool)
    for cell in rng.permutation(16):
        if keep.sum() <= target:
            break
        keep[cell] = False
        clue = np.where(keep, grid, 0)
        if int(((GRIDS == clue) | (clue == 0)).all(1).sum()) > 1:
            keep[cell] = True
    puzzle = "".join(str(d) if k else "." for d, k in zip(grid.tolist(), keep))
    return puzzle, "".join(str(d) for d in grid.tolist())


def problem(rng: np.random.Generator, held_out: bool) -> Tuple[str, str]:
    """(prompt, answer) strings: prompt `puzzle=`, answer the solution and a newline (eos not included)."""
    while True:
        puzzle, solution = make_puzzle(rng)
        if is_held_out(puzzle) == held_out:
            return puzzle + "=", solution + "\n"


def eval_set(n: int, seed: int = 1234) -> List[Tuple[str, str]]:
    """Held-out (prompt, answer) pairs, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    return [problem(rng, True) for _ in range(n)]


def is_solution(prompt: str, answer: str) -> bool:
    """`answer` (decoded text before the first eos) solves the puzzle in `prompt`: a valid grid that keeps
    every clue, then the newline. Puzzles have one solution, so this is exact match."""
    puzzle = prompt.rstrip("=")
    grid = answer[:-1] if answer.endswith("\n") else None
    return (grid is not None and is_valid_grid(grid) and len(puzzle) == 16
            and all(p == "." or p == g for p, g in zip(puzzle, grid)))


def show(prompt: str, answer: str) -> str:
    """Puzzle and answer side by side as two 4x4 grids (for the demo)."""
    puzzle = prompt.rstrip("=")
    grid = (answer.rstrip("\n") + "?" * 16)[:16]
    return "\n".join(f"{puzzle[r * 4:r * 4 + 4]}   {grid[r * 4:r * 4 + 4]}" for r in range(4))
