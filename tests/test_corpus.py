"""Chapter 4's cleaning pipeline on raw Wikipedia (lmlib.corpus)."""
from __future__ import annotations

import pytest

from lmlib import corpus
from lmlib.dedup import content_hash

BODY = ("The village lies on the left bank of the river and has a church that was built in the twelfth century. "
        "It was the seat of a small lordship until the revolution, and its market is still held every week. ") * 3


def record(i: int, title: str, body: str) -> str:
    return f'<doc id="{i}" url="?curid={i}" title="{title}">\n{title}\n\n{body}\n</doc>\n'


def test_parse_keeps_good_records_and_counts_bad_ones():
    text = (record(1, "Good", BODY) + "stray line\n" + '<doc id="x" title="No id">\nNo id\n</doc>\n'
            + record(2, "Tom &quot;Tiny&quot; Lee", "Short.") + '<doc id="3" url="?curid=3" title="Open">\nOpen\nbody\n')
    articles, report = corpus.parse_wikiextractor(text, "sample")
    assert [a.id for a in articles] == [1, 2]
    assert articles[1].title == 'Tom "Tiny" Lee'  # HTML entities in titles are unescaped
    assert articles[0].text == BODY.strip()  # the title line is not part of the body
    assert report.kept == 2 and report.lines == 4
    assert report.rejected == {"text outside a <doc> record": 1, "header without id, url and title": 1,
                               "record never closed by </doc>": 1}


def test_line_rule_drops_headings_and_dangling_list_intros():
    text = "History.\nThe school is divided into five phases as follows:\nIt opened in August 2016 in a new building.\nOk."
    kept, removed = corpus.keep_lines(text)
    assert kept == "It opened in August 2016 in a new building."
    assert removed == 3


@pytest.mark.parametrize("text, rule", [
    ("Too few words here.", "too short"),
    (" ".join(["a"] * 60), "odd word length"),
    (" ".join(["#tag word with of the"] * 20), "symbols"),
    (" ".join(["1990 2000 2010 the of"] * 20), "few alphabetic words"),
    (" ".join(["Lorem ipsum dolor sit amet"] * 20), "no stop words"),
    (" ".join(["the of scores 1234567 9876543"] * 20), "digits"),
])
def test_each_quality_rule_fires_on_its_case(text, rule):
    assert rule in corpus.quality_problems(text)
    assert set(corpus.quality_problems(text)) <= set(corpus.QUALITY_RULES)


def test_quality_measures_are_what_the_rules_judge():
    m = corpus.quality_measures("The cat #1 sat... on the mat of 2024 with 99 friends")
    assert m["words"] == 12 and m["stop_words"] == 3  # the, of, with
    assert m["symbols_per_word"] == pytest.approx(2 / 12) and m["alphabetic_share"] == pytest.approx(9 / 12)
    assert m["digit_share"] == pytest.approx(7 / sum(len(w) for w in "The cat #1 sat... on the mat of 2024 with 99 friends".split()))
    assert corpus.quality_measures("   ") == dict(words=0, mean_word_length=0.0, symbols_per_word=0.0,
                                                alphabetic_share=0.0, stop_words=0, digit_share=0.0)
    assert corpus.quality_problems("") == ["too short"]
    body = corpus.quality_measures(BODY)
    assert body["words"] >= 50 and 3 <= body["mean_word_length"] <= 10 and body["stop_words"] >= 2


def test_clean_document_passes_every_rule():
    assert corpus.quality_problems(BODY) == []


def test_clean_counts_every_stage_and_splits_by_document():
    other = BODY.replace("village", "town").replace("river", "lake")
    near = other.replace("every week", "each week")
    articles = [corpus.Article(i, f"T{i}", body) for i, body in enumerate(
        [BODY, BODY, "", "Heading.\nShort line.", other, near] + [f"{BODY} It is number {k} of the list." for k in range(8)])]
    out = corpus.clean(articles, n_val=2, progress=False)
    names = [row["stage"] for row in out.stages]
    assert names[0] == "parsed records" and names[-1] == "training split"
    docs = [row["docs"] for row in out.stages]
    assert docs == sorted(docs, reverse=True) and docs[0] == len(articles)
    assert out.drop_counts["empty"] == 1 and out.drop_counts["no sentence lines"] == 1
    assert out.drop_counts["exact duplicate"] == 1 and out.drop_counts.get("near duplicate", 0) >= 1
    assert len(out.val) == 2 and len(out.train) + len(out.val) == out.stages[-2]["docs"]
    assert not {content_hash(t) for t in out.train} & {content_hash(t) for t in out.val}
    table = out.table()
    assert table[0]["docs removed %"] == 0.0 and all(0 <= r["docs removed %"] <= 100 for r in table)


def test_clean_refuses_a_split_it_cannot_make():
    with pytest.raises(ValueError, match="n_val"):
        corpus.clean([corpus.Article(1, "T", BODY)], n_val=1, progress=False)


def test_real_slice_parses_without_bad_records(mirror):
    articles, reports = corpus.read_enwiki(2)
    assert sum(r.n_rejected for r in reports) == 0
    assert sum(r.kept for r in reports) == len(articles) > 2500
    with pytest.raises(ValueError, match="n_files"):
        corpus.read_enwiki(65)


def test_held_out_split_is_rebuilt_from_page_ids(mirror):
    articles, _ = corpus.read_enwiki(2)
    out = corpus.clean(articles, n_val=30, progress=False)
    assert corpus.held_out(articles, out.val_pages) == out.val
    with pytest.raises(ValueError, match="held-out page ids"):
        corpus.held_out(articles[:10], out.val_pages)
