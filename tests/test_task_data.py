"""The data recipes and checkers of the newer tiny models (tools/sudoku.py, tools/shakespeare_words.py)."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import shakespeare_words as SW  # noqa: E402
import sudoku as S  # noqa: E402


def test_grids_are_the_288_solved_4x4_grids():
    assert S.GRIDS.shape == (288, 16)
    assert len({tuple(g) for g in S.GRIDS.tolist()}) == 288
    assert all(S.is_valid_grid(g.tolist()) for g in S.GRIDS)
    # a Latin square that breaks a box is not a grid
    assert not S.is_valid_grid([1, 2, 3, 4, 2, 3, 4, 1, 3, 4, 1, 2, 4, 1, 2, 3])


def test_puzzles_have_one_solution_and_the_clue_range():
    rng = np.random.default_rng(5)
    clue_counts = set()
    for _ in range(300):
        puzzle, solution = S.make_puzzle(rng)
        sols = S.solutions(puzzle)
        assert len(sols) == 1 and "".join(map(str, sols[0].tolist())) == solution
        assert all(p == "." or p == s for p, s in zip(puzzle, solution))
        clue_counts.add(16 - puzzle.count("."))
    assert clue_counts <= set(range(S.CLUES[0], S.CLUES[1] + 1)) and len(clue_counts) >= 4


def test_held_out_split():
    rng = np.random.default_rng(6)
    share = np.mean([S.is_held_out(S.make_puzzle(rng)[0]) for _ in range(2000)])
    assert 0.07 < share < 0.13
    for held in (False, True):
        for _ in range(50):
            prompt, answer = S.problem(rng, held)
            assert S.is_held_out(prompt[:-1]) == held and prompt.endswith("=") and answer.endswith("\n")
    assert S.eval_set(20) == S.eval_set(20) and S.eval_set(20, seed=1) != S.eval_set(20)


def test_checker_accepts_the_solution_and_nothing_else():
    rng = np.random.default_rng(7)
    for _ in range(50):
        prompt, answer = S.problem(rng, True)
        assert S.is_solution(prompt, answer)
        assert not S.is_solution(prompt, answer[:-1])             # no newline
        assert not S.is_solution(prompt, answer[:-2] + "\n")      # too short
        blank = prompt.index(".")
        other = "1" if answer[blank] != "1" else "2"
        assert not S.is_solution(prompt, answer[:blank] + other + answer[blank + 1:])  # breaks a unit
        # another solved grid breaks a clue (the puzzle has one solution)
        for g in S.GRIDS[:3]:
            text = "".join(map(str, g.tolist())) + "\n"
            assert S.is_solution(prompt, text) == (text == answer)


def test_piece_tokenizer_is_lossless_and_deterministic(tmp_path):
    texts = {"a.txt": "The king, the KING!\nAnd the queen's page.\n\n  Exit.\n",
             "b.txt": "the king and the queen\nwherefore art thou?\n", "held.txt": "Zounds, the king!\n"}
    tok = SW.build_tokenizer(texts, ("held.txt",), words=4)
    # training texts only; by count (" the" 3, " king" 2, " queen" 2), ties by the piece
    assert tok.words == [" the", " king", " queen", " Exit"]
    for text in texts.values():
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert int(tok.char_lengths[ids].sum()) == len(text)
    assert len(tok.encode(" the")) == 1 and len(tok.encode(" Zounds")) == 7   # a word piece; spelled out
    tok.save(str(tmp_path))
    again = SW.PieceTokenizer.load(str(tmp_path))
    assert again.pieces == tok.pieces and (again.eos_id, again.mask_id) == (tok.eos_id, tok.mask_id)
    train, held = SW.streams(texts, ("held.txt",), tok)
    assert tok.decode(held) == texts["held.txt"] and int((train == tok.eos_id).sum()) == 2
    with pytest.raises(KeyError):
        tok.encode("é")


def test_spoken_text_keeps_only_the_verse_lines():
    import tiny_data as D

    raw = ("HAMLET\n\nby William Shakespeare\n\nPERSONS REPRESENTED.\n\nClaudius, King of Denmark.\n\n"
           "ACT I.\n\nScene I. Elsinore. A platform before the Castle.\n\n"
           "[Francisco at his post. Enter to him\nBernardo.]\n\nBer.\nWho's there?\n\n"
           "FRANCISCO.\n    Nay, answer me:  stand, and unfold yourself.\n\n1 Clown.\nLong live the king! [Exit.]\n\n"
           "  I\n\nFrom fairest creatures we desire increase,\n  That thereby beauty's rose might never die,\n")
    assert D.spoken_text(raw) == ("Who's there?\nNay, answer me: stand, and unfold yourself.\nLong live the king!\n"
                                  "From fairest creatures we desire increase,\nThat thereby beauty's rose might never die,\n")
