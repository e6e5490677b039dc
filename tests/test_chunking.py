import re
import time

import pytest

from search.ingest.markdown import parse_front_matter
from search.text.chunking import chunk_document
from search.embedding.spec import token_counter
from search.ingest.loading import load_documents
from search.schema import Document

SEQUENCE_PARALLEL = "序列并行是一种对于序列维度进行切分的并行策略"


def chars(text: str) -> int:
    """A transparent counter for structure tests: one token per non-space character."""
    return sum(1 for ch in text if not ch.isspace())


def md(text: str) -> Document:
    return Document(path="/notes/n.md", text=text, kind="markdown")


def txt(text: str) -> Document:
    return Document(path="/notes/n.txt", text=text, kind="text")


def spans(passages):
    return [(p.heading_path, p.text, p.line_start, p.line_end) for p in passages]


@pytest.fixture(scope="module")
def m3e():
    return token_counter("m3e-small")


# ----- front matter -------------------------------------------------------------------------------


def test_front_matter_becomes_metadata_not_body():
    text = (
        "---\nlayout: post\ntitle: \"机器学习笔记\"\nauthor:\ntags: 机器学习\ncategories: [ML, 2024]\n"
        "date: 2024-07-12\ntoc: true\n---\n\n# 标题\n\n正文一。\n\n## 小节\n\n正文二。\n"
    )
    metadata, body, lines = parse_front_matter(text)
    assert metadata == {
        "layout": "post",
        "title": "机器学习笔记",
        "tags": ["机器学习"],
        "categories": ["ML", "2024"],
        "date": "2024-07-12",
        "toc": True,
    }
    assert lines == 9 and body.startswith("\n# 标题\n")

    passages = chunk_document(md(text), chars)
    assert spans(passages) == [(["标题"], "正文一。", 13, 13), (["标题", "小节"], "正文二。", 17, 17)]
    assert all(p.metadata == metadata for p in passages)
    assert not any("layout" in p.text or "title" in p.text for p in passages)
    passages[0].metadata["tags"].append("changed")  # each passage has its own copy
    assert passages[1].metadata["tags"] == ["机器学习"]


def test_front_matter_values_are_json_safe():
    text = "---\ntitle: 2024\nupdated: 2024-07-12 10:30:00\ntags: [a, 1, null, '']\nextra: {when: 2024-01-02, n: [1]}\nblank: ''\n---\n"
    metadata, body, lines = parse_front_matter(text)
    assert metadata == {
        "title": "2024",
        "updated": "2024-07-12T10:30:00",
        "tags": ["a", "1"],
        "extra": {"when": "2024-01-02", "n": [1]},
    }
    assert (body, lines) == ("", 7)


@pytest.mark.parametrize(
    "front",
    [
        "title: [unclosed\nfoo: : bar",  # YAML syntax error
        "date: 2024-13-45",  # a date that does not exist
        "- just\n- a list",  # not a mapping
    ],
)
def test_malformed_front_matter_is_dropped_without_metadata(front):
    text = f"---\n{front}\n---\nbody text\n"
    body_line = front.count("\n") + 4
    [passage] = chunk_document(md(text), chars)
    assert (passage.text, passage.metadata, passage.line_start) == ("body text", {}, body_line)


def test_unclosed_front_matter_is_no_front_matter():
    assert parse_front_matter("---\ntitle: x\nno closing rule\n") == ({}, "---\ntitle: x\nno closing rule\n", 0)
    assert parse_front_matter("text\n---\na: 1\n---\n")[2] == 0  # only at the start of the file


def test_plain_text_has_no_front_matter_or_markdown():
    text = "---\ntitle: x\n---\n# not a heading {% include a.html %}\n"
    [passage] = chunk_document(txt(text), chars)
    assert passage.text == text.strip() and passage.metadata == {} and passage.heading_path == []


# ----- cleanup ------------------------------------------------------------------------------------


def test_liquid_tags_removed_captions_kept():
    text = (
        "图一如下。\n"
        '{% include image.html url="/assets/a.png" %}\n'
        "\n"
        '{% include image.html url="/assets/b.png" caption="梯度保持的很好，训练更快。" %}\n'
        "\n"
        "{% include figure.html\n   url=\"/c.png\"\n   alt='第三张图' %}\n"
        "站点 {{ site.url | relative_url }} 的说明。\n"
    )
    [passage] = chunk_document(md(text), chars)
    # lines left empty by a removed tag separate paragraphs like blank lines do
    assert passage.text == "图一如下。\n\n梯度保持的很好，训练更快。\n\n第三张图\n\n站点 的说明。"
    assert (passage.line_start, passage.line_end) == (1, 9)
    assert "{" not in passage.text and "url" not in passage.text


def test_html_comments_and_tags_removed():
    text = (
        "前文。<!-- 行内注释 -->后文。\n\n<!--\n多行\n注释\n-->\n"
        "<details><summary>展开</summary>内容<br>第二行</details>\n\n"
        '<img src="x.png" alt="架构图"> 见 <https://example.org/a?b=1>\n'
    )
    passages = chunk_document(md(text), chars)
    assert spans(passages) == [
        ([], "前文。后文。\n\n展开 内容 第二行\n\n架构图 见 https://example.org/a?b=1", 1, 9)
    ]


def test_comparisons_are_not_taken_for_html_tags():
    text = "当 x<b 且 y>a 时成立，H<sub>2</sub>O 与 `<div>` 保留。"
    [passage] = chunk_document(md(text), chars)
    assert passage.text == "当 x<b 且 y>a 时成立，H2O 与 <div> 保留。"


def test_links_and_images_keep_visible_text():
    text = (
        "See [the paper](https://x.org/p_(v2).pdf \"t\") and ![a diagram](d.png), "
        "[![logo](l.png)](https://l.org), **bold**, __strong__, *em* and [ref][1].\n"
        "Inline `code {{ x }}` stays, ~~old~~ goes.\n\n"
        "[1]: https://ref.org \"Ref\"\n"
        "[注意]: 这一行不是链接定义\n"
    )
    [passage] = chunk_document(md(text), chars)
    assert passage.text == (
        "See the paper and a diagram, logo, bold, strong, em and ref.\n"
        "Inline code {{ x }} stays, old goes.\n\n"
        "[注意]: 这一行不是链接定义"
    )
    assert (passage.line_start, passage.line_end) == (1, 5)


def test_whitespace_is_tidied():
    text = "line with trailing spaces   \nnext\n\n\n\n\nafter gap\n```\ncode   \n\n\n\nmore code\n```\n"
    [passage] = chunk_document(md(text), chars)
    assert passage.text == "line with trailing spaces\nnext\n\nafter gap\n\n```\ncode\n\nmore code\n```"


# ----- structure ----------------------------------------------------------------------------------


def test_heading_paths_and_line_ranges():
    text = (
        "preamble\n"  # 1
        "\n"
        "# Top\n"  # 3
        "\n"
        "intro\n"  # 5
        "\n"
        "## A [link](u) ##\n"  # 7
        "\n"
        "para a1\n"  # 9
        "para a2\n"  # 10
        "\n"
        "### A.1\n"  # 12
        "deep\n"  # 13
        "## B\n"  # 14
        "## Empty parent\n"  # 15
        "### Child\n"  # 16
        "child text\n"  # 17
        "# Second\n"  # 18
        "\n"
        "second text\n"  # 20
    )
    passages = chunk_document(md(text), chars, max_tokens=20)
    assert spans(passages) == [
        ([], "preamble", 1, 1),
        (["Top"], "intro", 5, 5),
        (["Top", "A link"], "para a1\npara a2", 9, 10),
        (["Top", "A link", "A.1"], "deep", 13, 13),
        (["Top", "B"], "B", 14, 14),  # no body, no subsections: the title stays findable
        (["Top", "Empty parent", "Child"], "child text", 17, 17),  # its parent emits nothing itself
        (["Second"], "second text", 20, 20),
    ]


def test_setext_headings():
    text = "Title\n=====\n\nbody one\n\nSub\n---\nbody two\n"
    assert spans(chunk_document(md(text), chars)) == [
        (["Title"], "body one", 4, 4),
        (["Title", "Sub"], "body two", 8, 8),
    ]


def test_code_and_tables_kept_intact_and_code_has_no_headings():
    text = (
        "## S\n\n"
        "```python\n# not a heading\nx = 1  # comment\n```\n\n"
        "| a | b |\n| - | - |\n| 1 | [two](u) |\n\n"
        "~~~\n## also not a heading\n~~~\n"
        "after\n"
    )
    [passage] = chunk_document(md(text), chars)
    assert passage.heading_path == ["S"]
    assert passage.text == (
        "```python\n# not a heading\nx = 1  # comment\n```\n\n"
        "| a | b |\n| - | - |\n| 1 | two |\n\n"
        "~~~\n## also not a heading\n~~~\n\nafter"
    )
    assert (passage.line_start, passage.line_end) == (3, 15)


def test_passages_never_cross_sections():
    text = "# A\n\nshort a\n\n# B\n\nshort b\n"
    passages = chunk_document(md(text), chars, max_tokens=200)
    assert [p.text for p in passages] == ["short a", "short b"]


def test_blocks_are_packed_up_to_the_budget():
    paragraphs = [f"第{i}段。" for i in range(10)]  # 4 characters each
    passages = chunk_document(md("\n\n".join(paragraphs)), chars, max_tokens=12)
    assert [p.text for p in passages] == [
        "第0段。\n\n第1段。\n\n第2段。",
        "第3段。\n\n第4段。\n\n第5段。",
        "第6段。\n\n第7段。\n\n第8段。",
        "第9段。",
    ]
    assert [(p.line_start, p.line_end) for p in passages] == [(1, 5), (7, 11), (13, 17), (19, 19)]


# ----- splitting ----------------------------------------------------------------------------------


def split_sentences(text: str) -> list[str]:
    return [s for s in re.split("(?<=[。！？；])", text) if s]


def test_long_chinese_paragraph_splits_at_sentence_ends_with_overlap():
    sentences = [f"这是第{i}句话，讲的是序列并行的一个细节" + "。！？；"[i % 4] for i in range(12)]
    passages = chunk_document(md("".join(sentences)), chars, max_tokens=60, overlap_tokens=25)
    assert len(passages) >= 4
    for passage in passages:
        assert chars(passage.text) <= 60
        assert passage.text[-1] in "。！？；"
    for before, after in zip(passages, passages[1:]):
        first = split_sentences(after.text)[0]
        assert first == split_sentences(before.text)[-1], "a piece starts with the previous piece's last sentence"
        assert chars(first) <= 25
    seen = dict.fromkeys(s for p in passages for s in split_sentences(p.text))
    assert "".join(seen) == "".join(sentences)


def test_split_pieces_report_the_lines_they_came_from():
    lines = [f"第{i}行的句子内容在这里。" for i in range(1, 9)]  # one sentence per line, one paragraph
    passages = chunk_document(md("\n".join(lines)), chars, max_tokens=30, overlap_tokens=0)
    assert len(passages) == 4
    for passage in passages:
        numbers = [int(n) for n in re.findall(r"第(\d+)行", passage.text)]
        assert (passage.line_start, passage.line_end) == (numbers[0], numbers[-1])


def test_english_sentences_split_at_sentence_ends():
    english = " ".join(f"Sentence {i} is about retrieval (BM25)." for i in range(30))
    passages = chunk_document(txt(english), chars, max_tokens=80, overlap_tokens=0)
    assert len(passages) > 3
    assert all(p.text.endswith(".") and p.text[0] == "S" and chars(p.text) <= 80 for p in passages)
    assert " ".join(p.text for p in passages) == english


def test_long_sentence_is_cut_at_commas_then_by_characters():
    clauses = "，".join(f"第{i}个分句没有句号" for i in range(20))
    passages = chunk_document(txt(clauses), chars, max_tokens=30, overlap_tokens=0)
    assert all(chars(p.text) <= 30 for p in passages)
    assert all(p.text.endswith("号") or p.text.endswith("，") for p in passages)
    blob = "无标点长句" * 200
    cut = chunk_document(txt(blob), chars, max_tokens=50)
    assert all(chars(p.text) <= 50 for p in cut) and "".join(p.text for p in cut) == blob


def test_long_sentence_without_punctuation_fits_the_real_tokenizer(m3e):
    blob = "没有标点的超长句子" * 120 + " and then some English words without any punctuation" * 40
    passages = chunk_document(md(blob), m3e, max_tokens=64)
    assert len(passages) > 10
    assert max(m3e(p.text) for p in passages) <= 64
    assert "".join(p.text.replace(" ", "") for p in passages) == blob.replace(" ", "")
    # a Latin word is not cut in half where a space is near
    english = [p.text for p in passages if p.text.isascii()]
    assert english and all(t.startswith("and") or t.split()[0] in blob.split() for t in english)


def test_long_table_splits_between_rows_repeating_header():
    rows = [f"| 第{i}行 | 内容内容内容 |" for i in range(30)]
    text = "## 表\n\n| 名称 | 描述 |\n| --- | --- |\n" + "\n".join(rows) + "\n"
    passages = chunk_document(md(text), chars, max_tokens=80)
    assert len(passages) > 2
    for passage in passages:
        assert passage.text.startswith("| 名称 | 描述 |\n| --- | --- |\n| 第")
        assert chars(passage.text) <= 80
        first_row = int(re.search(r"第(\d+)行", passage.text).group(1))
        last_row = int(re.findall(r"第(\d+)行", passage.text)[-1])
        expected_start = 3 if first_row == 0 else first_row + 5  # row i is on line i + 5
        assert (passage.line_start, passage.line_end) == (expected_start, last_row + 5)
    body = [row for p in passages for row in p.text.split("\n")[2:]]
    assert body == rows  # every row exactly once, in order


def test_long_code_block_splits_between_lines_inside_fences():
    code = [f"value_{i} = compute({i})" for i in range(20)]
    text = "```python\n" + "\n".join(code) + "\n```\n"
    passages = chunk_document(md(text), chars, max_tokens=80)
    assert len(passages) > 2
    assert all(p.text.startswith("```python\n") and p.text.endswith("\n```") for p in passages)
    assert all(chars(p.text) <= 80 for p in passages)
    assert [line for p in passages for line in p.text.split("\n")[1:-1]] == code
    assert passages[0].line_start == 1 and passages[-1].line_end == 22
    assert passages[1].line_start == int(passages[1].text.split("\n")[1].split("_")[1].split()[0]) + 2


def test_formula_kept_whole_when_it_fits():
    text = "求导：\n$$\n\\frac{a}{y} + \\frac{b}{1 - y} (-1) = 0\n$$\n所以成立。\n"
    [passage] = chunk_document(md(text), chars)
    assert passage.text == "求导：\n\n$$\n\\frac{a}{y} + \\frac{b}{1 - y} (-1) = 0\n$$\n\n所以成立。"


def test_plain_text_lines_and_paragraphs():
    text = "标题\n\n第一段。\n第二段。\n\n\n\n第三段。   \n"
    assert spans(chunk_document(txt(text), chars, max_tokens=5)) == [
        ([], "标题", 1, 1),
        ([], "第一段。", 3, 3),
        ([], "第二段。", 4, 4),
        ([], "第三段。", 8, 8),
    ]
    assert spans(chunk_document(txt(text), chars)) == [([], "标题\n\n第一段。\n第二段。\n\n第三段。", 1, 8)]


def test_budget_holds_when_joining_adds_tokens():
    # a tokenizer whose count of a joined text is more than the sum of its parts
    def greedy(text: str) -> int:
        return len(text) + 3 * text.count("\n")

    text = "\n\n".join(f"段落{i}：" + "内容。" * (i % 7 + 1) for i in range(40))
    for kind in ("markdown", "text"):
        passages = chunk_document(Document("/g", text, kind), greedy, max_tokens=40, overlap_tokens=10)
        assert passages and max(greedy(p.text) for p in passages) <= 40


def test_counting_is_linear_on_a_big_text():
    calls = {"chars": 0}

    def counting(text: str) -> int:
        calls["chars"] += len(text)
        return len(text)

    paragraph = "这是一个用于测试效率的句子，包含逗号。" * 8
    big = "\n\n".join([paragraph] * 3000) + "\n" + "无标点" * 20000  # ~0.5 M characters
    started = time.perf_counter()
    passages = chunk_document(txt(big), counting, max_tokens=200)
    assert time.perf_counter() - started < 10
    assert max(len(p.text) for p in passages) <= 200
    assert calls["chars"] < 6 * len(big)  # each part counted a bounded number of times, not quadratically


# ----- the user's notes ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens", [200, 64])
def test_seed_notes_fit_the_real_tokenizer_budget(seeds_dir, m3e, max_tokens):
    documents, skipped = load_documents([seeds_dir])
    assert len(documents) >= 3 and not [s for s in skipped if not s.path.endswith(".md")]
    for document in documents:
        passages = chunk_document(document, m3e, max_tokens=max_tokens)
        lines = document.text.split("\n")
        assert passages
        assert max(m3e(p.text) for p in passages) <= max_tokens
        assert all(1 <= p.line_start <= p.line_end <= len(lines) for p in passages)
        assert all(lines[p.line_start - 1].strip() for p in passages), "a passage starts on a line with content"
        if document.kind == "markdown" and "README" not in document.path:  # the README quotes `{% include %}`
            assert not any("{%" in p.text or "<!--" in p.text for p in passages)


def test_seed_markdown_post(seeds_dir, m3e):
    [document], _ = load_documents([seeds_dir / "000_161fb1e3bc0f0fdd.md"])
    passages = chunk_document(document, m3e)
    assert passages[0].metadata["title"] == "机器学习 -- 跟李沐学 AI【论文精读】（进行中）"
    assert passages[0].metadata["tags"] == ["机器学习"] and passages[0].metadata["categories"] == ["机器学习"]
    assert not any("layout: post" in p.text for p in passages)
    [caption] = [p for p in passages if "梯度保持的很好，训练更快。" in p.text]
    assert caption.heading_path == ["ResNet 论文逐段精读 53:46"] and caption.line_start == 55


def test_seed_plain_text_sequence_parallel_passage(seeds_dir, m3e):
    [document], _ = load_documents([seeds_dir / "002_42593514c2d838f2.txt"])
    passages = chunk_document(document, m3e)
    [hit] = [p for p in passages if SEQUENCE_PARALLEL in p.text]
    assert hit.line_start == 375 and hit.text.startswith("序列并行 " + SEQUENCE_PARALLEL)
    assert SEQUENCE_PARALLEL in document.text.split("\n")[374]


GAN_NOTE = """# GAN

生成对抗网络由生成器和判别器组成。训练一个 GAN 可能很困难，它经常会遇到各种问题，其中最主要的问题有以下三点:

* 消失梯度：判别器太好时，生成器得不到足够的梯度。
* 模式塌缩：生成器反复产生相同的输出。
* 收敛失败：由于许多因素，GANs 经常无法收敛。

后来的 WGAN 用 Wasserstein 距离缓解了这些问题。
"""


@pytest.mark.parametrize("max_tokens", [90, 120, 200])
def test_a_colon_ended_line_stays_with_the_list_it_introduces(max_tokens):
    passages = chunk_document(md(GAN_NOTE), chars, max_tokens=max_tokens)
    [intro] = [p for p in passages if "以下三点" in p.text]
    assert "消失梯度" in intro.text  # the list starts in the passage that announces it
    assert intro.text.index("以下三点") < intro.text.index("消失梯度")
    assert all(chars(p.text) <= max_tokens for p in passages)
    # a passage that is too small for everything keeps the sentence before the colon's apart, not the list
    if chars(GAN_NOTE) > max_tokens:
        assert intro.text.startswith("训练一个 GAN") or intro.text.startswith("生成对抗网络")


def test_a_colon_ended_line_stays_with_its_table_code_or_plain_text_bullets():
    table = "前言很长的一段话。" * 8 + "\n\n结果如下：\n\n| 模型 | 分数 |\n|---|---|\n| A | 1 |\n| B | 2 |\n"
    [*_, last] = chunk_document(md(table), chars, max_tokens=60)
    assert last.text.startswith("结果如下：") and "| B | 2 |" in last.text
    code = "前言很长的一段话。" * 8 + "\n\nRun this:\n\n```sh\nmake test\n```\n"
    [*_, last] = chunk_document(md(code), chars, max_tokens=60)
    assert last.text.startswith("Run this:") and "make test" in last.text
    bullets = "前言很长的一段话。" * 8 + "\n\n问题有以下两点：\n\n  • 消失梯度\n  • 模式塌缩\n"
    [*_, last] = chunk_document(txt(bullets), chars, max_tokens=60)
    assert last.text.startswith("问题有以下两点：") and "模式塌缩" in last.text
    # a colon that introduces nothing is an ordinary paragraph end
    plain = chunk_document(md("注意：\n\n这是正文。"), chars, max_tokens=5)
    assert [p.text for p in plain] == ["注意：", "这是正文。"]


def test_a_long_list_is_split_between_items_never_inside_one():
    items = [f"{i}. 第{i}项的第一行，说明一些事情。\n   第{i}项的第二行，接着说明。" for i in range(1, 9)]
    passages = chunk_document(md("\n".join(items)), chars, max_tokens=70)
    assert len(passages) > 1
    for passage in passages:
        lines = passage.text.split("\n")
        assert re.match(r"\d\. ", lines[0]), passage.text  # every passage starts at an item
        numbers = re.findall(r"第(\d)项的第一行", passage.text)
        assert numbers and all(f"第{n}项的第二行" in passage.text for n in numbers)  # items kept whole


def test_seed_notes_gan_problems_stay_with_their_introduction(seeds_dir, m3e):
    for name in ("000_161fb1e3bc0f0fdd.md", "002_42593514c2d838f2.txt"):
        [document], _ = load_documents([seeds_dir / name])
        [intro] = [p for p in chunk_document(document, m3e) if "以下三点" in p.text]
        assert "消失梯度" in intro.text, name
