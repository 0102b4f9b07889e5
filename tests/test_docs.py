"""The user guide builds in strict mode (a broken link or an unresolved docstring reference fails it), and the parts
it reads from the code at build time say what the code says: every refusal message, the collator's packed layout,
BENCHMARKS.md as it is, and an API reference of exactly the public names."""

import ast
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import longalign_hf

ROOT = Path(__file__).resolve().parents[1]


def _hooks():
    path = ROOT / "docs" / "hooks" / "generated_sections.py"
    spec = importlib.util.spec_from_file_location("generated_sections", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["generated_sections"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config)]
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's notice about its successor
    return subprocess.run(
        [*command, "--site-dir", str(site)], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    start = time.perf_counter()
    result = _build(ROOT / "mkdocs.yml", site)
    print(f"mkdocs build --strict: {time.perf_counter() - start:.1f} s")  # `pytest -s` shows it
    assert result.returncode == 0, result.stderr[-4000:]
    return site


def _text(html_file: Path) -> str:
    return re.sub(r"<[^>]+>", "", html_file.read_text(encoding="utf-8"))


def test_every_page_of_the_guide_is_built(site):
    pages = [path.stem for path in (ROOT / "docs").glob("*.md")]
    assert len(pages) == 8
    for page in pages:
        assert (site / ("index.html" if page == "index" else f"{page}/index.html")).is_file(), page


def test_a_broken_link_or_an_unresolved_reference_fails_the_build(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("[a page](missing.md) and [a name][longalign_hf.NoSuchName]\n")
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    config = re.sub(r"(?ms)^nav:.*?^(?=\w)", "", config).replace("docs_dir: docs", f"docs_dir: {docs}")
    config = config.replace("docs/hooks/", f"{ROOT}/docs/hooks/").replace('paths: ["."]', f'paths: ["{ROOT}"]')
    (tmp_path / "mkdocs.yml").write_text(config)
    result = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "missing.md" in result.stderr and "longalign_hf.NoSuchName" in result.stderr


def test_the_troubleshooting_page_lists_every_refusal_in_the_code(site):
    # Reference: a plain text search for the raise statements, independent of the hook's syntax-tree walk.
    sources = [p.read_text("utf-8") for folder in ("longalign_hf", "recipes") for p in (ROOT / folder).rglob("*.py")]
    types = ["UserInputError", "ValueError", "TypeError"]
    types += [
        name for source in sources for name in re.findall(rf"^class (\w+)\((?:{'|'.join(types)})\):", source, re.M)
    ]
    assert {"ConversationError", "RegistryUnreachableError"} <= set(types)  # a bad row's reason, an unreachable index
    expected = sum(len(re.findall(rf"raise (?:{'|'.join(types)})\(", source)) for source in sources)
    refusals = _hooks().collect_refusals()
    assert len({(r.module, r.line) for r in refusals}) == expected > 200
    page = _text(site / "troubleshooting" / "index.html")
    assert f"{len(refusals)} messages from {expected} raise statements in" in page
    # A message as the config writes it, code spans and all, with the function that raises it.
    message = "`batching='pack'` needs `max_length` (the size of a pack); set it, e.g. `max_length=65536`."
    found = [r for r in refusals if r.message == message]
    assert len(found) == 1 and found[0].module == "longalign_hf/training/config.py"
    assert found[0].function == "LongAlignConfig.__post_init__"
    assert "batching='pack' needs max_length (the size of a pack); set it, e.g. max_length=65536." in page
    assert not any(r.message == "" for r in refusals)
    assert "the conversation has no assistant turn, so it has nothing to learn from" in page


@pytest.mark.parametrize(
    "options",
    [
        {"label_smoothing_factor": 0.1},  # a row of the config's table of refused options, in a loop
        {"truncation_mode": "keep_end"},
        {"batching": "sorted"},  # a row of the table of allowed values
        {"batching": "pack", "max_length": None},
    ],
)
def test_a_listed_message_is_what_the_code_raises(options, tmp_path):
    """The listed message, its run-time parts as wildcards, matches the message the config really raises."""
    from longalign_hf import LongAlignConfig

    with pytest.raises(ValueError) as raised:
        LongAlignConfig(output_dir=str(tmp_path), use_cpu=True, **options)
    listed = [r.message for r in _hooks().collect_refusals() if r.module == "longalign_hf/training/config.py"]
    message = str(raised.value)
    matching = [
        parts
        for parts in (re.split(r"\{[^{}]*\}", template) for template in listed)
        if re.fullmatch(".*".join(re.escape(part) for part in parts), message)
    ]
    assert len(matching) == 1, message
    # Most of it is spelled out on the page, not left to run time (`{name}: {why}` would match anything).
    assert len("".join(matching[0])) > len(message) / 2, (matching, message)


def test_the_concepts_page_shows_the_collators_own_packed_layout(site):
    tree = ast.parse((ROOT / "longalign_hf" / "training" / "collator.py").read_text(encoding="utf-8"))
    docstring = next(ast.get_docstring(n) for n in tree.body if getattr(n, "name", "") == "LongAlignDataCollator")
    layout_row = next(line for line in docstring.splitlines() if line.strip().startswith("loss_sample_ids"))
    assert " ".join(layout_row.split()) in " ".join(_text(site / "concepts" / "index.html").split())


def test_the_benchmarks_page_includes_benchmarks_md_rather_than_a_copy(site):
    benchmarks = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", benchmarks, flags=re.M)
    source = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    page = _text(site / "benchmarks" / "index.html")
    assert '--8<-- "BENCHMARKS.md"' in source and len(headings) >= 10
    for heading in headings:
        assert heading not in source
        assert heading.replace("`", "") in page.replace("&amp;", "&")


def test_every_picture_of_the_guide_is_in_the_site(site):
    """BENCHMARKS.md's pictures point at repository paths; included in the guide, they must resolve there too."""
    for page in site.rglob("*.html"):
        for source in re.findall(r'<img[^>]*\bsrc="([^"]+)"', page.read_text(encoding="utf-8")):
            if not re.match(r"[a-z]+:|/", source):
                assert (page.parent / source).resolve().is_file(), (page, source)
    pictures = "![a](benchmark/figures/a.png) ![b](https://x/b.png) ![c](<c d.png> 'title') [d](d.png)"
    assert _hooks().local_pictures(pictures) == ["benchmark/figures/a.png", "c d.png"]


def test_the_api_reference_documents_exactly_the_public_names(site):
    reference = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    assert re.findall(r"^::: longalign_hf\.(\w+)$", reference, flags=re.M) and sorted(
        re.findall(r"^::: longalign_hf\.(\w+)$", reference, flags=re.M)
    ) == sorted(longalign_hf.__all__)
    page = (site / "reference" / "index.html").read_text(encoding="utf-8")
    for name in longalign_hf.__all__:
        assert f'id="longalign_hf.{name}"' in page, name
