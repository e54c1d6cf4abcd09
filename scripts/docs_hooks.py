"""MkDocs hooks for the documentation site (``mkdocs.yml``; ``make docs``).

- The home page is README.md itself (its ``docs/`` links made relative to the site), so the two
  never drift apart.
- The figures under ``figures/`` (the README's and the experiment page's) are served from there,
  not copied into ``docs/``.
- The API reference pages are generated from the ``_PUBLIC`` tables of ``landscape/__init__.py``
  and ``sam/__init__.py`` (read statically, nothing imported), one section per submodule with its
  public names, rendered from the docstrings by mkdocstrings: a public name added there appears
  in the reference, and one that griffe cannot find fails the strict build.
"""

from __future__ import annotations

import ast
import pathlib

from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("landscape", "sam")


def _public(package: str) -> dict[str, tuple[str, ...]]:
    """The package's ``_PUBLIC`` table (submodule -> public names), read from its source."""
    tree = ast.parse((ROOT / package / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_PUBLIC" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise RuntimeError(f"{package}/__init__.py has no _PUBLIC table")


def _reference_page(package: str) -> str:
    """Markdown for one package's API reference: its docstring, then each submodule's names."""
    lines = [
        f"# `{package}` API",
        "",
        f"::: {package}",
        "    options:",
        "      members: false",
        "      show_root_heading: false",
        "      show_root_toc_entry: false",
        "",
    ]
    for module, names in sorted(_public(package).items()):
        lines += [f"::: {package}.{module}", "    options:", "      members:"]
        lines += [f"        - {name}" for name in sorted(names)]
        lines.append("")
    return "\n".join(lines)


def on_files(files, config):
    for png in sorted((ROOT / "figures").glob("*.png")):
        files.append(
            File(
                f"figures/{png.name}",
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    for package in PACKAGES:
        files.append(
            File.generated(config, f"reference/{package}.md", content=_reference_page(package))
        )
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "index.md":
        return markdown
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme.replace("](docs/", "](")
