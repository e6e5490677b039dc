import json
import string
import subprocess
import sys

import pytest

from search.text import language, tokenizing
from search.text import jieba_dictionary
from search.text.language import detect_language
from search.text.tokenizing import Tokenizer, normalize, tokenize, tokenize_many, tokenize_query

CJK_PUNCT = "，。！？；：、“”‘’（）【】《》—…·「」『』〈〉"


def test_nfkc_full_width_to_half_width_and_lower_case():
    assert normalize("ＧＰＴ－４ ＬＬａＭＡ") == "gpt-4 llama"
    assert tokenize("ＧＰＴ－４") == ["gpt-4", "gpt", "4"]
    assert tokenize("GPT-4") == tokenize("gpt-4") == tokenize("ＧＰＴ－４")
    assert tokenize("ＤｅｅｐＳｐｅｅｄ") == tokenize("deepspeed") == ["deepspe"]  # stemmed, the same way everywhere


def test_unicode_hyphens_join_like_ascii_hyphen():
    # U+2011 non-breaking hyphen (NFKC -> U+2010) and U+2013 en dash
    assert tokenize("GPT\u20114") == tokenize("GPT-4")
    assert tokenize("all\u2013to\u2013all") == tokenize("all-to-all")


# jieba's words alone: the structure tests below read more clearly without the unigrams and stems
words = Tokenizer(cjk_unigrams=False, stem=False).tokenize


def test_default_adds_cjk_unigrams_after_the_words_of_each_run():
    assert tokenize("序列并行和GPT-4") == ["序列", "并行", "和", "序", "列", "并", "行", "和", "gpt-4", "gpt", "4"]
    assert tokenize("蛋") == ["蛋"]  # a one-character run is not repeated


def test_query_tokens_count_a_one_character_word_once():
    # "吗" and "和" are jieba words of one character: a passage repeats them as unigrams, a query does not
    assert tokenize("乳腺癌会死吗") == ["乳腺", "腺癌", "乳腺癌", "会", "死", "吗", "乳", "腺", "癌", "会", "死", "吗"]
    assert tokenize_query("乳腺癌会死吗") == ["乳腺", "腺癌", "乳腺癌", "会", "死", "吗", "乳", "腺", "癌"]
    assert tokenize_query("序列并行和GPT-4") == ["序列", "并行", "和", "序", "列", "并", "行", "gpt-4", "gpt", "4"]
    # only as many repeats go as jieba emitted the word alone: the "是" inside 不是/是不是 stay unigrams
    assert tokenize_query("你是不是傻呀") == ["你", "不是", "是不是", "傻", "呀", "是", "不", "是"]
    # every token of a query is a token of the same text as a passage, so BM25 still finds it
    for text in ("糖尿病可以喝牛奶吗，鸡蛋呢？", "我的我的", "蛋", "ZeRO-3 切分", "how long to brew tea"):
        assert set(tokenize_query(text)) == set(tokenize(text))
    assert tokenize_query("how long to brew tea") == tokenize("how long to brew tea")
    assert tokenize_query("") == []


def test_mixed_chinese_english_sentence():
    toks = words("我们用DeepSpeed的ZeRO-3和GPT-4做all-to-all通信，序列并行很重要！")
    for expected in ["deepspeed", "zero-3", "zero", "3", "gpt-4", "gpt", "all-to-all", "all", "to", "序列", "并行", "通信"]:
        assert expected in toks, expected
    assert not any(ch in t for t in toks for ch in "，！,!" + string.whitespace)
    # text order: whole identifier first, then its parts; Chinese words where they stand
    assert toks == [
        "我们", "用", "deepspeed", "的", "zero-3", "zero", "3", "和", "gpt-4", "gpt", "4", "做",
        "all-to-all", "all", "to", "all", "通信", "序列", "并行", "很", "重要",
    ]


def test_search_mode_emits_sub_words_of_long_chinese_words():
    assert words("中华人民共和国") == ["中华", "华人", "人民", "共和", "共和国", "中华人民共和国"]
    toks = words("清华大学的计算机科学")
    assert {"清华", "大学", "清华大学"} <= set(toks)


def test_identifiers():
    assert words("C++ 和 C# 都是语言") == ["c++", "和", "c#", "都", "是", "语言"]
    assert words("GPT-3.5 比 3.5 版本") == ["gpt-3.5", "gpt", "3", "5", "比", "3.5", "3", "5", "版本"]
    assert words("v1.2.3") == ["v1.2.3", "v1", "2", "3"]
    assert words("snake_case") == ["snake_case", "snake", "case"]
    assert words("DeepSpeed-Ulysses and LLaMA-2") == [
        "deepspeed-ulysses", "deepspeed", "ulysses", "and", "llama-2", "llama", "2",
    ]
    # a separator needs a letter/digit after it: sentence-final period and trailing hyphen are dropped
    assert words("We used GPT-4. Then-") == ["we", "used", "gpt-4", "gpt", "4", "then"]


def test_english_words_are_stemmed_in_mixed_text_and_identifiers_stay_whole():
    text = "临床 trials 中 treated 的 patients 用 GPT-4 和 all-to-all 通信, fine-tuned models"
    toks = Tokenizer(cjk_unigrams=False).tokenize(text)
    assert toks == [
        "临床", "trial", "中", "treat", "的", "patient", "用", "gpt-4", "gpt", "4", "和",
        "all-to-all", "all", "to", "all", "通信", "fine-tuned", "fine", "tune", "model",
    ]
    # documents and queries alike: the singular query finds the plural passage and the reverse
    assert tokenize_query("a clinical trial") == tokenize("a clinical trials") == ["a", "clinic", "trial"]
    assert set(tokenize_query("treatment of patient")) & set(tokenize("patients were treated")) == {"patient"}
    assert tokenize("treated") == tokenize("treating") == tokenize("treats") == ["treat"]
    # letters with digits, versions and code names are not words a stemmer knows
    assert tokenize("gpt4 v1.2.3 c++ ZeRO-3s") == ["gpt4", "v1.2.3", "v1", "2", "3", "c++", "zero-3s", "zero", "3s"]
    assert Tokenizer(stem=False).tokenize("trials") == ["trials"]


def test_queries_match_compounds_both_ways():
    doc = set(tokenize("DeepSpeed-Ulysses 使用 all-to-all 通信"))
    assert set(tokenize("all to all")) <= doc
    assert set(tokenize("all-to-all")) <= doc
    assert "gpt-4" in tokenize("GPT-4 的上下文") and "gpt-4" in tokenize("gpt-4")


def test_punctuation_and_whitespace_never_emitted():
    assert tokenize("") == []
    assert tokenize("   \n\t\u3000 ") == []
    assert tokenize(string.punctuation) == []
    assert tokenize(CJK_PUNCT) == []
    toks = tokenize("（注意）：【序列并行】《论文》“引用”，结束。")
    assert toks and all(t.isalnum() for t in toks)
    assert "序列" in toks and "论文" in toks


def test_other_scripts_and_digits():
    assert tokenize("café naïve Привет") == ["café", "naïv", "привет"]  # Latin letters are stemmed, Cyrillic is not
    assert tokenize("2024年3月") == ["2024", "年", "3", "月"]


def test_tokenize_many_and_options():
    texts = ["序列并行", "GPT-4", ""]
    assert tokenize_many(texts) == [tokenize(t) for t in texts]
    assert Tokenizer(search_mode=False, cjk_unigrams=False).tokenize("中华人民共和国") == ["中华人民共和国"]
    assert Tokenizer(split_compounds=False).tokenize("all-to-all 通信") == ["all-to-all", "通信", "通", "信"]
    assert Tokenizer(stopwords={"的"}, cjk_unigrams=False).tokenize("我的模型") == ["我", "模型"]
    assert words("我的模型") == ["我", "的", "模型"]  # no stop words by default


def test_jieba_is_lazy_quiet_and_private():
    code = (
        "import jieba, search.text.tokenizing as t, search.text.jieba_dictionary as d\n"
        "assert d._jieba_tokenizer is None\n"
        "assert t.tokenize('序列并行') == ['序列', '并行', '序', '列', '并', '行']\n"
        "assert d._jieba_tokenizer is not None and d._jieba_tokenizer is not jieba.dt\n"
        "assert not jieba.dt.initialized\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "prefix dict" not in done.stderr and done.stdout == ""


@pytest.mark.parametrize(
    "text, lang",
    [
        ("序列并行沿序列维度切分输入", "zh"),
        ("Sequence parallelism splits the input along the sequence dimension", "en"),
        ("我们用DeepSpeed的ZeRO-3做all-to-all通信", "zh"),  # 12 ideographs vs 5 Latin words
        ("We use DeepSpeed ZeRO-3 for 训练", "en"),  # 2 ideographs vs 5 Latin words
        ("模型 model", "zh"),  # tie goes to zh
        ("ＧＰＴ ｍｏｄｅｌ ｔｒａｉｎｉｎｇ 好", "en"),  # full-width Latin counts as Latin
        ("", "en"),
        ("12345 !!!", "en"),
    ],
)
def test_detect_language(text, lang):
    assert detect_language(text) == lang


def _real_texts(eval_dir, seeds_dir, per_file=150):
    """Chinese and mixed text from the shared corpora and queries, and the seed notes."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(seeds_dir.iterdir()) if p.suffix in (".md", ".txt")]
    for path in sorted(eval_dir.glob("*/*.jsonl")):
        with open(path, encoding="utf-8") as handle:
            for _, line in zip(range(per_file), handle):
                row = json.loads(line)
                texts.append(f"{row.get('title', '')}\n{row['text']}")
    return texts


def test_compact_dictionary_segments_exactly_like_jieba(eval_dir, seeds_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(jieba_dictionary, "_dictionary_cache", lambda: tmp_path / "dictionary")
    full = jieba_dictionary._new_jieba(compact=False)  # loads jieba's table and writes the compact copy
    compact = jieba_dictionary._new_jieba(compact=True)
    assert isinstance(compact.FREQ, jieba_dictionary.CompactDictionary) and isinstance(full.FREQ, dict)
    assert compact.total == full.total
    runs = {run for text in _real_texts(eval_dir, seeds_dir) for run in language._CJK_RUN_RE.findall(normalize(text))}
    assert len(runs) > 1000 and sum(map(len, runs)) > 50_000
    for run in runs:
        assert list(compact.cut_for_search(run)) == list(full.cut_for_search(run)), run
        assert list(compact.cut(run, HMM=False)) == list(full.cut(run, HMM=False)), run
    words = list(full.FREQ.items())[::997]
    assert all(compact.FREQ[w] == f and w in compact.FREQ for w, f in words)
    assert "不是一个词xyz" not in compact.FREQ and compact.FREQ.get("不是一个词xyz", 0) == 0


def test_long_runs_switch_to_the_in_memory_dictionary(monkeypatch):
    monkeypatch.setattr(jieba_dictionary, "_jieba_tokenizer", None)
    monkeypatch.setattr(jieba_dictionary, "_jieba_cuts", 0)
    monkeypatch.setattr(jieba_dictionary, "FULL_DICTIONARY_AFTER", 3)
    jieba_dictionary._new_jieba(compact=False)  # make sure the compact copy exists
    monkeypatch.setattr(jieba_dictionary, "_jieba_cuts", 0)
    tok = Tokenizer()
    first = tok.tokenize("序列并行")
    assert isinstance(jieba_dictionary._jieba_tokenizer.FREQ, jieba_dictionary.CompactDictionary)
    for text in ["数据并行", "张量并行", "流水线并行"]:
        tok.tokenize(text)
    assert isinstance(jieba_dictionary._jieba_tokenizer.FREQ, dict)
    assert Tokenizer().tokenize("序列并行") == first
