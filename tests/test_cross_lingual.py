"""A Chinese query finds an English passage and an English query a Chinese one (dictionary translation)."""

import pytest

from search import Engine, SearchConfig
from search.text.translation import translate

from bilingual_notes import ACROSS_LANGUAGES, write_notes


def test_translate_both_ways():
    assert set(translate("我该去睡觉了", "en").split()) >= {"should", "go", "sleep"}
    assert "猫" in translate("My cat drinks milk", "zh").split()
    assert translate("", "en") == translate("the of a", "zh") == ""


def test_translation_for_a_model_keeps_what_is_already_in_its_language():
    """The dense query of the other space keeps names, identifiers and numbers, and the words already
    in that language; the BM25 terms (keep=False) add only translated words, which the query lacks."""
    english = translate("DNA复制是什么，2008年？", "en", keep=True).split()
    assert english[0] == "DNA" and "copy" in english and "2008" in english and "，" not in english
    assert "DNA" not in translate("DNA复制是什么", "en").split()
    chinese = translate("how does GPT-4 handle 长文本 for Muiriel in 2008?", "zh", keep=True).split()
    assert {"GPT-4", "长文本", "Muiriel", "处理", "2008"} <= set(chinese) and not {"how", "does", "for"} & set(chinese)
    assert not {"GPT-4", "长文本", "Muiriel"} & set(translate("how does GPT-4 handle 长文本 for Muiriel", "zh").split())


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = write_notes(tmp_path_factory.mktemp("xling"))
    Engine.build([root], root / "index")[0].close()
    engine = Engine.open(root / "index", config=SearchConfig(cross_lingual=True))
    yield engine
    engine.close()


@pytest.mark.parametrize("query, expected", [
    ("绿茶要泡多久", "tea.md"),
    ("去机场的最后一班火车", "trains.md"),
    ("will it rain tomorrow afternoon", "rain.md"),
    ("my cat drinks milk", "cat.md"),
])
def test_a_query_finds_the_other_languages_passage_first(engine, query, expected):
    assert engine.search(query, k=1).hits[0].path.endswith(expected)


def test_on_a_mixed_index_auto_and_never_keep_a_query_to_its_language(engine):
    for mode in ("auto", "never"):
        with Engine.open(engine.folder.root, config=SearchConfig(cross_lingual=mode)) as plain:
            assert plain.config.cross_lingual == mode
            retrieval = plain.retrieve(plain.analyse("绿茶要泡多久"), 10)
            assert not retrieval.translated
            assert not plain.search("绿茶要泡多久", k=1).hits[0].path.endswith("tea.md")


@pytest.mark.parametrize("language, query, expected", ACROSS_LANGUAGES)
def test_by_default_a_query_is_translated_where_its_language_is_absent(one_language, language, query, expected):
    engine = one_language[language]
    assert engine.config.cross_lingual == "auto"
    assert engine.retrieve(engine.analyse(query), 10).translated  # the other language's passages were searched translated
    assert engine.search(query, k=1).hits[0].path.endswith(expected)
    with Engine.open(engine.folder.root, config=SearchConfig(cross_lingual="never")) as plain:
        assert not plain.retrieve(plain.analyse(query), 10).translated


def test_a_mixed_query_is_translated_where_its_main_language_is_absent(one_language):
    """A Chinese question naming an English word is still a Chinese question: on English notes its
    Chinese words are translated too, not left to a model that cannot read them."""
    engine = one_language["en"]
    query = engine.analyse("去机场的最后一班train几点开")
    assert query.language == "zh" and query.languages == {"zh", "en"}
    assert engine.retrieve(query, 10).translated
    assert engine.search(query.text, k=1).hits[0].path.endswith("trains.md")


def test_cross_lingual_settings_are_checked():
    assert SearchConfig(cross_lingual=True).cross_lingual == "always"
    assert SearchConfig(cross_lingual=False).cross_lingual == "never"
    assert SearchConfig().cross_lingual == "auto"
    with pytest.raises(ValueError, match="auto, always, never"):
        SearchConfig(cross_lingual="sometimes")
