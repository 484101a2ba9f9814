"""Prompt files are read a line at a time and checked with errors naming the line and field; a
job's images, seeds and batches are a function of the job alone."""
import json

import pytest

from dalle2_fast.jobs.plan import count_images, file_name, iter_chunks, iter_items, iter_plain_items
from dalle2_fast.jobs.prompts import iter_prompt_file
from dalle2_fast.jobs.spec import differences


def _write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("".join(ln + "\n" for ln in lines))
    return p


def test_text_and_jsonl_formats(tmp_path):
    txt = _write(tmp_path, "p.txt", ["a red circle", "", "  a blue square  ", '{"prompt": "taken as text"}'])
    assert [(ln.line, ln.prompt) for ln in iter_prompt_file(txt)] == [
        (1, "a red circle"), (3, "a blue square"), (4, '{"prompt": "taken as text"}')]
    js = _write(tmp_path, "p.jsonl", [json.dumps({"prompt": "a", "n": 3, "seed": 9, "decoder_steps": 4}), "",
                                      json.dumps({"prompt": "b", "prior_guidance": 1.5})])
    a, b = list(iter_prompt_file(js))
    assert (a.line, a.prompt, a.n, a.seed, a.options) == (1, "a", 3, 9, {"decoder_steps": 4})
    assert (b.line, b.n, b.seed, b.options) == (3, None, None, {"prior_guidance": 1.5})


@pytest.mark.parametrize("line,match", [
    ('{"prompt": "a", "colour": "red"}', r"p.jsonl:2: unknown field\(s\) \['colour'\]"),
    ('{"n": 2}', r"p.jsonl:2: missing field 'prompt'"),
    ('{"prompt": ""}', r"p.jsonl:2: prompt: expected non-empty text"),
    ('{"prompt": "a", "n": 0}', r"p.jsonl:2: n: expected an integer in \[1, 1000000\], got 0"),
    ('{"prompt": "a", "n": 2.5}', r"p.jsonl:2: n: expected an integer"),
    ('{"prompt": "a", "seed": "7"}', r"p.jsonl:2: seed: expected an integer in \[0, 2\^63 - 1\], got '7'"),
    ('{"prompt": "a", "seed": -1}', r"p.jsonl:2: seed: expected an integer"),
    ('{"prompt": "a", "decoder_steps": 0}', r"p.jsonl:2: decoder_steps: expected an integer in \[1, 10000\]"),
    ('{"prompt": "a", "prior_guidance": NaN}', r"p.jsonl:2: prior_guidance: expected a finite number"),
    ('{"prompt": "a",', r"p.jsonl:2: not valid JSON"),
    ('["a"]', r"p.jsonl:2: expected a JSON object with a 'prompt', got list"),
    ('{"prompt": "' + "x" * 2001 + '"}', r"p.jsonl:2: prompt: 2001 characters is longer than the 2000"),
])
def test_bad_lines_name_the_line_and_field(tmp_path, line, match):
    p = _write(tmp_path, "p.jsonl", ['{"prompt": "fine"}', line])
    with pytest.raises(ValueError, match=match):
        list(iter_prompt_file(p))


def test_the_file_is_streamed(tmp_path):
    """Line 1 is yielded before line 3 is read: a bad line far down is found when the stream gets
    there (the job reads the whole file once, to count and check, before any model loads)."""
    p = tmp_path / "p.txt"
    p.write_bytes(b"a red circle\nok\n\xff\xfe bad\n")
    it = iter_prompt_file(p)
    assert next(it).prompt == "a red circle"
    assert next(it).prompt == "ok"
    with pytest.raises(ValueError, match=r"p.txt:3: not UTF-8"):
        next(it)


def test_seeds_follow_the_one_rule_and_lines_may_name_their_own(tmp_path):
    js = _write(tmp_path, "p.jsonl", [json.dumps({"prompt": "a"}), json.dumps({"prompt": "b", "n": 3, "seed": 100}),
                                      json.dumps({"prompt": "c", "n": 2})])
    items = [it for it, _ in iter_items(iter_prompt_file(js), n=2, seed=7)]
    # image k without a line seed: 7 + k; the line with seed 100: 100, 101, 102
    assert [(it.index, it.prompt, it.seed) for it in items] == [
        (0, "a", 7), (1, "a", 8), (2, "b", 100), (3, "b", 101), (4, "b", 102), (5, "c", 12), (6, "c", 13)]
    assert count_images(iter_prompt_file(js), 2) == 7
    with pytest.raises(ValueError, match=r"--seed: seed 9223372036854775807 \+ 2 exceeds"):
        list(iter_plain_items(3, 2**63 - 1))


def test_chunks_group_consecutive_images_with_the_same_options(tmp_path):
    js = _write(tmp_path, "p.jsonl", [json.dumps({"prompt": "a", "n": 5}), json.dumps({"prompt": "b", "n": 2}),
                                      json.dumps({"prompt": "c", "n": 3, "decoder_steps": 3}),
                                      json.dumps({"prompt": "d", "n": 1})])
    chunks = list(iter_chunks(iter_items(iter_prompt_file(js), 1, 0), 3))
    assert [[it.index for it in c.items] for c in chunks] == [[0, 1, 2], [3, 4, 5], [6], [7, 8, 9], [10]]
    assert [c.number for c in chunks] == list(range(5)) and chunks[3].options == (("decoder_steps", 3),)
    # the union of the ranks' chunks is every image once, for any number of ranks
    for world in (1, 2, 3):
        got = sorted(it.index for r in range(world) for c in chunks if c.number % world == r for it in c.items)
        assert got == list(range(11))


def test_file_names_and_spec_differences():
    assert file_name(5, 10) == "000005.png" and file_name(5, 10**7) == "0000005.png"
    old = {"seed": 1, "settings": {"decoder_steps": 2, "prior_steps": 3}, "model": {"path": "/a", "sha256": "x"}}
    new = {"seed": 1, "settings": {"decoder_steps": 4, "prior_steps": 3}, "model": {"path": "/b", "sha256": "y"}}
    assert differences(old, new) == ["model.sha256: 'x' in the job, 'y' now",
                                     "settings.decoder_steps: 2 in the job, 4 now"]  # the path is not compared
