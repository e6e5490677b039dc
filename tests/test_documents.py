"""Notes as people keep them: Jupyter notebooks (nbformat), Word files (python-docx) and Obsidian vaults;
and broken versions of each. Files are written with the real libraries; indexes are keyword-only."""

import json
import zipfile

import docx
import nbformat
import pytest
from click.testing import CliRunner

from search import BuildConfig, Engine, LoadOptions
from search.cli import cli
from search.ingest.loading import discover_files, iter_documents
from search.schema import Document, Skipped


def build(paths, index, **load):
    return Engine.build(paths, index, build_config=BuildConfig(keyword_only=True, load=LoadOptions(**load)))


def items(path, **load):
    [source], _ = discover_files([path])
    return list(iter_documents(source, LoadOptions(**load)))


# ----- notebooks --------------------------------------------------------------------------------------


def write_notebook(path, extra_output=None):
    v4 = nbformat.v4
    notebook = v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}})
    notebook.cells = [
        v4.new_markdown_cell("# Tide analysis\n\nWe study the harbour gauge."),  # cell 1
        v4.new_code_cell("import pandas as pd\ngauge = pd.read_csv('gauge.csv')"),  # cell 2
        v4.new_raw_cell("raw cells are not indexed"),  # cell 3
        v4.new_markdown_cell("## Cleaning"),  # cell 4
        v4.new_code_cell("gauge = gauge.dropna()  # drop the missing barnacle readings\nprint(len(gauge))",  # cell 5
                         outputs=[v4.new_output("stream", name="stdout", text="\x1b[31m4821 rows after the walrus filter\x1b[0m\n"),
                                  v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure size 640x480>"}),
                                  v4.new_output("error", ename="KeyError", evalue="'salinity'", traceback=["\x1b[31mTraceback"])]),
        v4.new_markdown_cell("## Results\n\nThe spring tide peaks at 4.2 metres."),  # cell 6
        v4.new_code_cell(""),  # cell 7: empty
    ]
    if extra_output is not None:
        notebook.cells[1].outputs = [v4.new_output("stream", name="stdout", text=extra_output)]
    nbformat.write(notebook, str(path))


def test_notebook_cells_in_order_with_heading_paths_and_cell_locations(tmp_path):
    path = tmp_path / "analysis.ipynb"
    write_notebook(path)
    docs = items(path)
    assert [d.metadata["cell"] for d in docs] == [1, 2, 4, 5, 6]
    assert docs[1].text == "```python\nimport pandas as pd\ngauge = pd.read_csv('gauge.csv')\n```"
    assert docs[3].headings == [(1, "Tide analysis"), (2, "Cleaning")]
    assert "walrus" not in docs[3].text  # outputs only when asked for

    with_outputs = items(path, notebook_outputs=True)
    assert with_outputs[3].text.endswith("```output\n4821 rows after the walrus filter\n```\n\n"
                                         "```output\n<Figure size 640x480>\n```\n\n```output\nKeyError: 'salinity'\n```")
    assert "iVBOR" not in with_outputs[3].text and "\x1b" not in with_outputs[3].text

    engine, summary = build([tmp_path], tmp_path / "index")
    [hit] = engine.search("barnacle readings", k=1, mode="bm25").hits
    assert (hit.location, hit.heading_path) == (f"{path} cell 5", ["Tide analysis", "Cleaning"])
    assert engine.search("spring tide peaks", k=1, mode="bm25").hits[0].location == f"{path} cell 6"
    assert not engine.search("walrus filter", k=1, mode="bm25").hits

    engine, summary = build([tmp_path], tmp_path / "index", notebook_outputs=True)  # other options re-read the file
    assert summary.files_changed == 1
    assert engine.search("walrus filter", k=1, mode="bm25").hits[0].location == f"{path} cell 5"


def test_broken_notebooks_are_skipped_with_one_line_each(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_notebook(data / "good.ipynb")
    (data / "not_json.ipynb").write_text("# this is a python script\nprint('hello')\n", encoding="utf-8")
    (data / "no_cells.ipynb").write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}}), encoding="utf-8")
    (data / "truncated.ipynb").write_text((data / "good.ipynb").read_text(encoding="utf-8")[:300], encoding="utf-8")
    write_notebook(data / "huge_output.ipynb", extra_output="x" * (50 * 2**20))  # a 50 MB printed output
    write_notebook(data / "big_output.ipynb", extra_output="y " * 2**20)  # 2 M characters: under the file limit

    engine, summary = build([data], tmp_path / "index", notebook_outputs=True)
    reasons = {s.path.replace(str(data) + "/", ""): s.reason for s in summary.skipped}
    assert reasons == {
        "not_json.ipynb": "not a Jupyter notebook: not JSON",
        "no_cells.ipynb": "not a Jupyter notebook: it has no cells",
        "truncated.ipynb": "not a Jupyter notebook: not JSON",
        "huge_output.ipynb": reasons["huge_output.ipynb"],
        "big_output.ipynb cell 2": "an output of 2 M characters left out: over the 1 M limit for notebook outputs",
    }
    assert reasons["huge_output.ipynb"].endswith("over the 50 MB limit for one document: split it or pass --max-file-size")
    assert summary.files_added == 2  # good.ipynb, and big_output.ipynb without its big output
    assert {h.path for h in engine.search("barnacle readings", k=5, mode="bm25", collapse=False).hits} == {
        str(data / "good.ipynb"), str(data / "big_output.ipynb")}


# ----- Word -------------------------------------------------------------------------------------------


def write_docx(path):
    document = docx.Document()
    document.core_properties.title = "Field report"
    document.add_paragraph("Colony survey, southern coast", style="Title")
    document.add_paragraph("Counted on a windy morning.")
    document.add_heading("Penguins", level=1)
    document.add_heading("Emperor colony", level=2)
    document.add_paragraph("Emperor penguins huddle in rotating circles to share warmth.")
    document.add_paragraph("first rotation", style="List Bullet")
    document.add_paragraph("second rotation", style="List Bullet")
    table = document.add_table(rows=3, cols=3)
    for r, row in enumerate([["物种", "数量", "备注"], ["帝企鹅", "1200", "繁殖期"], ["阿德利企鹅", "340", "换羽的个体较多"]]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    document.add_heading("Seals", level=1)
    document.add_paragraph("```not a code fence, just text that starts with backticks")
    document.add_paragraph("Leopard seals patrol the ice edge.")
    document.save(str(path))


def test_docx_headings_give_the_heading_path_and_tables_keep_their_cells(tmp_path):
    path = tmp_path / "report.docx"
    write_docx(path)
    [doc] = items(path)
    assert doc.metadata == {"title": "Field report"}
    assert doc.text == (
        "Counted on a windy morning.\n\n# Penguins\n\n## Emperor colony\n\n"
        "Emperor penguins huddle in rotating circles to share warmth.\n\n- first rotation\n- second rotation\n\n"
        "| 物种 | 数量 | 备注 |\n| --- | --- | --- |\n| 帝企鹅 | 1200 | 繁殖期 |\n| 阿德利企鹅 | 340 | 换羽的个体较多 |\n\n"
        "# Seals\n\n\\```not a code fence, just text that starts with backticks\n\nLeopard seals patrol the ice edge."
    )

    engine, _ = build([path], tmp_path / "index")
    [hit] = engine.search("rotating circles warmth", k=1, mode="bm25").hits
    assert (hit.location, hit.heading_path) == (str(path), ["Penguins", "Emperor colony"])
    [row] = engine.search("换羽", k=1, mode="bm25").hits
    assert "| 阿德利企鹅 | 340 | 换羽的个体较多 |" in row.text and "| 物种 | 数量 | 备注 |" in row.text
    [seal] = engine.search("leopard seals", k=1, mode="bm25").hits
    assert seal.heading_path == ["Seals"]
    assert engine.search("field report", k=1, mode="bm25").hits  # the title is in every passage's context


def test_broken_word_files_are_skipped_with_one_line_each(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_docx(data / "good.docx")
    with zipfile.ZipFile(data / "renamed.docx", "w") as archive:  # a zip of something else
        archive.writestr("photos/boat.txt", "not a Word document")
    with zipfile.ZipFile(data / "sheet.docx", "w") as archive:  # a spreadsheet with the wrong suffix
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", "<workbook/>")
    (data / "old.docx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512))  # a .doc (OLE2)
    with zipfile.ZipFile(data / "broken.docx", "w") as archive:  # the right names, broken XML
        archive.writestr("[Content_Types].xml", "<Types")
        archive.writestr("word/document.xml", "<w:document")

    engine, summary = build([data], tmp_path / "index")
    reasons = {s.path.replace(str(data) + "/", ""): s.reason for s in summary.skipped}
    assert sorted(reasons) == ["broken.docx", "old.docx", "renamed.docx", "sheet.docx"]
    assert reasons["renamed.docx"].startswith("not a Word document (.docx): the archive holds no word/document.xml")
    assert reasons["sheet.docx"] == reasons["renamed.docx"]
    assert reasons["old.docx"].startswith("not a Word document (.docx): not a zip archive")
    assert reasons["broken.docx"].startswith("not a readable Word document (.docx)")
    assert summary.files_added == 1 and engine.search("leopard seals", k=1, mode="bm25").hits


# ----- Obsidian ---------------------------------------------------------------------------------------


def write_vault(folder):
    (folder / ".obsidian").mkdir(parents=True)
    (folder / ".obsidian" / "app.json").write_text('{"theme": "dark"}', encoding="utf-8")
    (folder / "灯塔.md").write_text(
        "---\naliases: [Pharos, 航标灯]\ntags: [航海]\n---\n"
        "# 灯塔\n\n"
        "守塔人每天早晨擦亮黄铜透镜，参见 [[Fresnel lens|菲涅尔透镜]] 和 [[守塔日记#冬天]]。 #标签 #project/alpha\n\n"
        "%% 私人备注：不要搜索到这句话 %%\n\n"
        "> [!warning]- 风暴预警\n> 大风天不要爬上塔顶。 ^storm-1\n\n"
        "![[lighthouse.png|300]]\n\n"
        "`#不是标签` and C# and #123 are not tags.\n",
        encoding="utf-8",
    )
    (folder / "守塔日记.md").write_text("# 守塔日记\n\n## 冬天\n\n冬天的海雾很浓，要 ==提前点灯==。\n", encoding="utf-8")
    (folder / "Fresnel lens.md").write_text("---\ntags: travel/europe\n---\nThe Fresnel lens bends light with concentric rings.\n", encoding="utf-8")


def test_obsidian_vault_wikilinks_tags_aliases_comments_and_callouts(tmp_path):
    vault = tmp_path / "vault"
    write_vault(vault)
    index = str(tmp_path / "index")
    runner = CliRunner()
    result = runner.invoke(cli, ["index", str(vault), "--index", index, "--keyword-only"])
    assert result.exit_code == 0, result.output
    assert "3 files added" in result.output and "0 skipped" in result.output  # .obsidian/ is hidden

    def hits(*args):
        out = runner.invoke(cli, ["query", *args, "--json", "--mode", "bm25", "--index", index])
        assert out.exit_code == 0, out.output
        return json.loads(out.stdout)

    [note] = hits("守塔人 黄铜透镜", "-k", "1")
    assert "参见 菲涅尔透镜 和 守塔日记 > 冬天。" in note["text"]
    assert "[[" not in note["text"] and "[!warning]" not in note["text"] and "^storm-1" not in note["text"]
    assert "风暴预警\n大风天不要爬上塔顶。" in note["text"]
    assert note["metadata"]["tags"] == ["航海", "标签", "project/alpha", "project"]
    assert "私人备注" not in note["text"] and "%%" not in note["text"]  # comments are not body text
    assert [h["path"] for h in hits("守塔人", "--tag", "标签")] == [str(vault / "灯塔.md")]  # an inline Chinese tag
    assert [h["path"] for h in hits("灯", "--tag", "project")] == [str(vault / "灯塔.md")]  # a nested tag's parent
    assert [h["path"] for h in hits("lens", "--tag", "travel")] == [str(vault / "Fresnel lens.md")]  # front matter a/b
    assert hits("Pharos", "-k", "1")[0]["path"] == str(vault / "灯塔.md")  # aliases are searchable
    assert hits("提前点灯", "-k", "1")[0]["text"].endswith("冬天的海雾很浓，要 提前点灯。")
    assert not [h for h in hits("不是标签", "--tag", "不是标签")]
