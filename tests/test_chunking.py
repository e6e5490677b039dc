import re

import pytest

from search.chunking import chunk_document, parse_front_matter
from search.embedding import token_counter
from search.schema import Document


def chars(text: str) -> int:
    """A simple budget counter for structure tests: one token per non-space character."""
    return sum(1 for ch in text if not ch.isspace())


def md(text: str) -> Document:
    return Document(path="/notes/n.md", text=text, kind="markdown")


def test_front_matter_becomes_metadata_not_text():
    text = "---\ntitle: \"笔记\"\ntags: 机器学习\ncategories: [a, b]\ndate: 2024-07-12\nempty:\n---\n\n正文。\n"
    metadata, body, lines = parse_front_matter(text)
    assert metadata == {"title": "笔记", "tags": ["机器学习"], "categories": ["a", "b"], "date": "2024-07-12"}
    assert lines == 7 and body == "\n正文。\n"
    [passage] = chunk_document(md(text), chars)
    assert passage.text == "正文。" and passage.line_start == 9
    assert passage.metadata["tags"] == ["机器学习"]


def test_malformed_front_matter_is_dropped_without_crashing():
    [passage] = chunk_document(md("---\ntitle: [unclosed\n---\nbody text\n"), chars)
    assert passage.metadata == {} and passage.text == "body text" and passage.line_start == 4


def test_liquid_tags_and_comments_removed_captions_kept():
    text = (
        "段落一。\n{% include image.html url=\"/a.png\" caption=\"梯度保持的很好。\" %}\n"
        "<!-- a comment\nover two lines -->\n{{ site.url }}后面的字\n"
    )
    [passage] = chunk_document(md(text), chars)
    assert passage.text == "段落一。\n梯度保持的很好。\n\n后面的字"
    assert "include" not in passage.text and "comment" not in passage.text
    assert (passage.line_start, passage.line_end) == (1, 5)


def test_links_and_images_keep_visible_text():
    text = "See [the paper](https://x.org/p.pdf) and ![a diagram](d.png), <https://a.io/x>, **bold** [ref][1].\n\n[1]: https://ref.org\n"
    [passage] = chunk_document(md(text), chars)
    assert passage.text == "See the paper and a diagram, https://a.io/x, bold ref."


def test_heading_paths_and_line_ranges():
    text = "# Top\n\nintro\n\n## A\n\npara a1\npara a2\n\n### A.1\n\ndeep\n\n## B\n\n## C\n\nc text\n"
    passages = chunk_document(md(text), chars, max_tokens=20)
    got = [(p.heading_path, p.text, p.line_start, p.line_end) for p in passages]
    assert got == [
        (["Top"], "intro", 3, 3),
        (["Top", "A"], "para a1\npara a2", 7, 8),
        (["Top", "A", "A.1"], "deep", 12, 12),
        (["Top", "B"], "B", 14, 14),  # a heading with nothing under it stays findable
        (["Top", "C"], "c text", 18, 18),
    ]


def test_code_block_and_table_kept_intact():
    text = "## S\n\n```python\n# not a heading\nx = 1\n```\n\n| a | b |\n| - | - |\n| 1 | 2 |\n"
    [passage] = chunk_document(md(text), chars)
    assert passage.heading_path == ["S"]
    assert "```python\n# not a heading\nx = 1\n```" in passage.text
    assert "| a | b |\n| - | - |\n| 1 | 2 |" in passage.text


def test_long_table_splits_between_rows_repeating_header():
    rows = "\n".join(f"| 第{i}行 | 内容内容内容 |" for i in range(30))
    text = "| 名称 | 描述 |\n| --- | --- |\n" + rows + "\n"
    passages = chunk_document(md(text), chars, max_tokens=60)
    assert len(passages) > 2
    for passage in passages:
        assert passage.text.startswith("| 名称 | 描述 |\n| --- | --- |\n| 第")
        assert chars(passage.text) <= 60
    assert passages[1].line_start == int(passages[1].text.split("\n")[2].split("第")[1].split("行")[0]) + 3


def test_long_chinese_paragraph_splits_at_sentence_ends_with_overlap():
    sentences = [f"这是第{i}句话，讲的是序列并行的一个细节" + "。！？；"[i % 4] for i in range(12)]
    passages = chunk_document(Document("/t.txt", "".join(sentences), "text"), chars, max_tokens=60, overlap_tokens=25)
    assert len(passages) > 2
    for passage in passages:
        assert chars(passage.text) <= 60
        assert passage.text[-1] in "。！？；"  # cut at a sentence end
    split = lambda text: [s for s in re.split("(?<=[。！？；])", text) if s]
    for before, after in zip(passages, passages[1:]):
        assert split(after.text)[0] in split(before.text), "each piece starts with the previous one's last sentence"
    assert "".join(dict.fromkeys(s for p in passages for s in split(p.text))) == "".join(sentences)


def test_english_sentences_split_and_unpunctuated_text_hard_cut():
    english = " ".join(f"Sentence number {i} talks about retrieval." for i in range(40))
    passages = chunk_document(Document("/e.txt", english, "text"), chars, max_tokens=80, overlap_tokens=0)
    assert all(p.text.endswith(".") and chars(p.text) <= 80 for p in passages)
    blob = "无标点" * 200
    cut = chunk_document(Document("/b.txt", blob, "text"), chars, max_tokens=50)
    assert all(chars(p.text) <= 50 for p in cut) and "".join(p.text for p in cut) == blob


def test_plain_text_lines_are_paragraphs_with_line_numbers():
    text = "标题\n\n第一段。\n第二段。\n\n\n第三段。\n"
    passages = chunk_document(Document("/p.txt", text, "text"), chars, max_tokens=5)
    assert [(p.text, p.line_start, p.line_end) for p in passages] == [("标题", 1, 1), ("第一段。", 3, 3), ("第二段。", 4, 4), ("第三段。", 7, 7)]
    assert all(p.heading_path == [] for p in passages)


def test_real_tokenizer_budget_on_seed_notes(seeds_dir):
    from search.loading import load_documents

    count = token_counter("m3e-small")
    documents, _ = load_documents([seeds_dir])
    assert len(documents) >= 3
    for document in documents:
        passages = chunk_document(document, count, max_tokens=128)
        assert passages
        assert max(count(p.text) for p in passages) <= 128
        assert all(1 <= p.line_start <= p.line_end <= document.text.count("\n") + 1 for p in passages)


def test_seed_plain_text_sequence_parallel_passage(seeds_dir):
    from search.loading import load_documents

    documents, _ = load_documents([seeds_dir / "002_42593514c2d838f2.txt"])
    passages = chunk_document(documents[0], token_counter("m3e-small"))
    [hit] = [p for p in passages if "序列并行是一种对于序列维度进行切分的并行策略" in p.text]
    assert hit.line_start == 375
    front = chunk_document(load_documents([seeds_dir / "000_161fb1e3bc0f0fdd.md"])[0][0], token_counter("m3e-small"))
    assert front[0].metadata["title"].startswith("机器学习") and front[0].metadata["tags"] == ["机器学习"]
    assert not any("{%" in p.text or "layout: post" in p.text for p in front)
