"""The README and docs/: short, and every figure quoted from a result agrees with its committed JSON (docs/render.py)."""

import importlib.util
import pathlib
import re
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _renderer():
    spec = importlib.util.spec_from_file_location("docs_render", ROOT / "docs" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _renderer()


def test_readme_is_read_in_five_minutes():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


@pytest.mark.parametrize("page", render.pages(ROOT), ids=lambda page: page.name)
def test_page_renders_to_itself(page):
    text = page.read_text()
    assert render.render_text(text, ROOT) == text, render.drift(page, ROOT)


def test_every_figure_names_an_existing_file_and_key():
    figures = 0
    for page in render.pages(ROOT):
        for match in render.FIGURE.finditer(page.read_text()):
            figures += 1
            path = ROOT / match["file"]
            assert path.is_file(), f"{page.name}: {match['file']} does not exist"
            assert not match["file"].startswith("/") and ".." not in match["file"], match["file"]
            render.lookup(render.load(ROOT, match["file"]), match["key"])  # raises KeyError if missing
    assert figures > 50
    assert render.check(ROOT) == []


def test_hand_edited_figure_fails_the_check(tmp_path):
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    for name in {m["file"] for p in render.pages(ROOT) for m in render.FIGURE.finditer(p.read_text())}:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    assert render.check(tmp_path) == []
    page = tmp_path / "README.md"
    text = page.read_text()
    match = next(m for m in render.FIGURE.finditer(text) if re.search(r"\d", m["text"]))
    digit = re.search(r"\d", match["text"]).start()
    figure = match["text"][:digit] + ("8" if match["text"][digit] == "9" else "9") + match["text"][digit + 1 :]
    edited = text[: match.start("text")] + figure + text[match.end("text") :]
    assert edited != text
    page.write_text(edited)
    problems = render.check(tmp_path)
    assert len(problems) == 1 and "README.md" in problems[0]  # the hand edit is caught
    # and rendering puts the JSON's figure back
    render.render(tmp_path)
    assert page.read_text() == text and render.check(tmp_path) == []


def test_key_paths_and_formats():
    data = {"a": {"0.1": 0.743, "0": 1}, "rows": [{"x": 2.5}], "none": None}
    assert render.lookup(data, "a.0.1") == 0.743 and render.lookup(data, "a.0") == 1
    assert render.lookup(data, "rows.0.x") == 2.5
    with pytest.raises(KeyError):
        render.lookup(data, "a.0.2")
    assert render.format_value(0.743, "percent1") == "74.3 %"
    assert render.format_value(0.67, "percent") == "67 %"
    assert render.format_value(0.152, "points1") == "15.2"
    assert render.format_value(2488.4, ",.0f") == "2,488"
    assert render.format_value(None, "percent") == "n/a"
