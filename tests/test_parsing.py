"""The response parser on literal strings: think block, answer, citations, qa decision."""

from __future__ import annotations

import pytest

from bioreasoner.core.parsing import CITATION_RE, find_pmids, parse_response, pmid_mentions


@pytest.mark.parametrize(
    ("text", "distinct", "mentions"),
    [
        # the contract's own style
        ("as shown [PMID:123]", ["123"], 1),
        # a space after the colon
        ("as shown [PMID: 123]", ["123"], 1),
        # bare "PMID n" in prose
        ("PMID 4567 reported it", ["4567"], 1),
        # colon without brackets
        ("see PMID:89.", ["89"], 1),
        # parenthesised 8-digit PMID
        ("a trial (PMID 12345678) found", ["12345678"], 1),
        # a comma list inside brackets
        ("[PMID: 1, 2]", ["1", "2"], 2),
        # a semicolon list repeating the prefix
        ("[PMID:1; PMID:2]", ["1", "2"], 2),
        # lower case
        ("pmid:123 and Pmid: 7", ["123", "7"], 2),
        # the largest PMID length, 10 digits
        ("[PMID:1234567890]", ["1234567890"], 1),
        # 11 digits is not a PMID
        ("[PMID:12345678901]", [], 0),
        # a leading zero is not a PMID
        ("[PMID:0123]", [], 0),
        # the invalid item of a list is dropped, the valid one kept
        ("[PMID: 5, 0123]", ["5"], 1),
        # bare numbers are not citations
        ("in 2019, 12345678 patients", [], 0),
        # a PMC id is not a PMID
        ("PMC123456 and [PMC:123456]", [], 0),
        # a DOI is not a citation
        ("doi:10.1000/182 https://doi.org/10.1038/nphys1170", [], 0),
        # a word merely ending in "pmid" is not the prefix
        ("XPMID:5", [], 0),
        # a number after a comma counts only inside brackets
        ("PMID 1, 20 patients", ["1"], 1),
        # first-seen order across styles, repeats counted once
        ("[PMID:9] then PMID 3 then [PMID: 9, 3]", ["9", "3"], 4),
        # empty text
        ("", [], 0),
    ],
)
def test_citation_styles(text, distinct, mentions):
    assert find_pmids(text) == distinct
    assert len(pmid_mentions(text)) == mentions
    parsed = parse_response(text)
    assert list(parsed.citations) == distinct
    assert parsed.citation_mentions == mentions


def test_citation_re_is_exported_and_matches_the_contract_style():
    assert CITATION_RE.search("text [PMID:42] text") is not None
    assert CITATION_RE.search("text 42 text") is None


@pytest.mark.parametrize(
    ("text", "has_think", "closed", "think", "answer"),
    [
        # the contract: a closed block, then the answer
        ("<think>\nreason\n</think>\nthe answer", True, True, "reason", "the answer"),
        # unclosed block: think runs to the end, answer is the whole text
        ("<think> still reasoning", True, False, "still reasoning", "<think> still reasoning"),
        # closing tag without opening: no think, the answer is what follows it
        ("reasoning </think> final", False, False, "", "final"),
        # two blocks: the first opening and the first closing after it; the later block is cut from the answer
        ("<think>a</think> mid <think>b</think> end", True, True, "a", "mid   end"),
        # no tags at all: everything is the answer
        ("just an answer", False, False, "", "just an answer"),
        # tags in other case and with spaces
        ("<THINK>x</ Think >y", True, True, "x", "y"),
        # a closed block and nothing after it
        ("<think>only thinking</think>", True, True, "only thinking", ""),
        # empty string
        ("", False, False, "", ""),
    ],
)
def test_think_block_and_answer(text, has_think, closed, think, answer):
    parsed = parse_response(text)
    assert (parsed.has_think, parsed.think_closed, parsed.think, parsed.answer) == (has_think, closed, think, answer)


@pytest.mark.parametrize(
    ("text", "decision"),
    [
        # the contract's last line
        ("<think>r</think>\nIt helps.\nAnswer: yes", "yes"),
        # markdown bold and a full stop
        ("<think>r</think>\n**Answer:** Yes.", "yes"),
        # "Final answer"
        ("<think>r</think>\nFinal answer: no", "no"),
        # bold around the value only
        ("<think>r</think>\nAnswer: **Maybe**", "maybe"),
        # the last one wins
        ("<think>r</think>\nAnswer: yes\nOn reflection.\nANSWER: no", "no"),
        # decision inside think but not in the answer
        ("<think>Answer: yes</think>\nIt depends on the cohort.", None),
        # decision only inside a second think block after the answer
        ("<think>r</think> Answer: no <think>Answer: yes</think>", "no"),
        # a value that is not a label
        ("<think>r</think>\nAnswer: probably", None),
        # "no" must be a whole word
        ("<think>r</think>\nAnswer: nope", None),
        # a verdict word without the "Answer:" label is not parsed
        ("<think>r</think>\nYes.", None),
        # without any think block the whole text is the answer
        ("Answer: maybe", "maybe"),
        # unclosed think: the whole text is the answer, so its last label counts
        ("<think>weighing it... Answer: no", "no"),
        # empty string
        ("", None),
    ],
)
def test_decision(text, decision):
    assert parse_response(text).decision == decision


def test_same_pmid_twenty_times_is_one_citation_and_twenty_mentions():
    text = "<think>" + " ".join(["[PMID:31415926]"] * 20) + "</think> done"
    parsed = parse_response(text)
    assert parsed.citations == ("31415926",)
    assert parsed.citation_mentions == 20


def test_citations_come_from_the_whole_response():
    parsed = parse_response("<think>[PMID:1] says so</think> and [PMID:2] agrees")
    assert parsed.citations == ("1", "2")


@pytest.mark.parametrize(
    ("text", "distinct"),
    [
        # full-width brackets, letters, colon and digits (NFKC)
        ("as shown ［ＰＭＩＤ：１２３４５６７８］", ["12345678"]),
        # full-width digits only
        ("[PMID:１２３]", ["123"]),
        # a zero-width space between the colon and the number
        ("[PMID:\u200b123]", ["123"]),
        # zero-width space, non-joiner and joiner inside the word
        ("P\u200bM\u200cI\u200dD 42", ["42"]),
        # a soft hyphen inside the number
        ("[PMID:12\u00ad34]", ["1234"]),
        # word joiners around the colon, a byte-order mark in front
        ("\ufeffPMID\u2060:\u206099", ["99"]),
        # an ideographic space after the colon
        ("[PMID:\u3000123]", ["123"]),
        # a full-width comma list
        ("［PMID: 1， 2］", ["1", "2"]),
        # Arabic-Indic digits are digits
        ("(PMID ١٢٣)", ["123"]),
        # a full-width leading zero is still not a PMID
        ("[PMID:０１２３]", []),
        # superscript digits read as digits after NFKC
        ("PMID ¹²³", ["123"]),
    ],
)
def test_hidden_citations_are_parsed(text, distinct):
    assert find_pmids(text) == distinct
    assert list(parse_response(text).citations) == distinct


@pytest.mark.parametrize(
    ("text", "closed", "think", "answer", "decision"),
    [
        # full-width angle brackets make real tags
        ("＜think＞r＜/think＞ Answer: yes", True, "r", "Answer: yes", "yes"),
        # zero-width characters inside the tags
        ("<\u200bthink>r</th\u200bink> Answer: no", True, "r", "Answer: no", "no"),
        # a full-width decision line
        ("<think>r</think> Ａｎｓｗｅｒ： ｍａｙｂｅ", True, "r", "Answer: maybe", "maybe"),
        # a zero-width space between the label and the value
        ("<think>r</think> Answer:\u200b yes", True, "r", "Answer: yes", "yes"),
    ],
)
def test_hidden_tags_and_decisions_are_parsed(text, closed, think, answer, decision):
    parsed = parse_response(text)
    assert (parsed.think_closed, parsed.think, parsed.answer, parsed.decision) == (closed, think, answer, decision)
