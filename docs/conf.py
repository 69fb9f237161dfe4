"""Sphinx configuration of the nce_ref site.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (the ``docs``
extra installs what it needs).  The site works offline: MathJax is vendored under
``_static/mathjax`` (SVG output, glyphs drawn as paths, no font files), the theme ships
its own assets, and no page loads a script, style sheet or font from the network
(``.ci/check_site.py`` checks it).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE / "_data"))  # the performance plot script

import nce_ref  # noqa: E402

os.environ.setdefault("MPLBACKEND", "Agg")

# -- project ---------------------------------------------------------------------------
project = "nce_ref"
author = "the nce_ref developers"
copyright = "the nce_ref developers"
release = nce_ref.__version__
version = ".".join(release.split(".")[:2])

# -- extensions ------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "sphinx_copybutton",
    "matplotlib.sphinxext.plot_directive",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "_static",
    "_templates",
    "_data",
    "examples",  # the gallery's sources; sphinx-gallery renders them into auto_examples/
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "figures",
    "**/README.md",
    "conftest.py",
]
templates_path = ["_templates"]
default_role = "py:obj"
suppress_warnings: list[str] = []

# -- MyST (the Markdown pages) --------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
# "[x](derivations.md#5-infonce)": anchors for headings down to ####.
myst_heading_anchors = 4
myst_dmath_double_inline = True

# -- maths: MathJax 3, vendored, offline ------------------------------------------------
mathjax_path = "mathjax/tex-svg-full.js"  # relative: served from _static/
mathjax3_config = {
    "tex": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]]},
    "svg": {"fontCache": "global"},
    # nothing to load: the -full component bundles every TeX extension
    "loader": {"load": []},
}

# -- API reference: autosummary + numpydoc --------------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": False}
# the interop bridges and communicators import their framework: where one is not
# installed (a docs-only environment), autodoc documents them against a stand-in
autodoc_mock_imports = [m for m in ("torch", "jax", "mpi4py") if importlib.util.find_spec(m) is None]
autodoc_typehints = "none"  # numpydoc's Parameters section gives the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

# -- gallery -----------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    # execute (and list) only the plot_*.py scripts; the sharded_*.py launch scripts
    # (torchrun, mpiexec) are neither run nor rendered
    "filename_pattern": r"[\\/]plot_[^\\/]*\.py$",
    "ignore_pattern": r"(^|[\\/])(__init__|sharded_[^\\/]*)\.py$",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "write_computation_times": False,
    "remove_config_comments": True,
    "image_scrapers": ("matplotlib",),
    "matplotlib_animations": False,
    "abort_on_example_error": False,
    "only_warn_on_example_error": False,
    "show_memory": False,
    "plot_gallery": "True",
    "min_reported_time": 10_000,  # no per-example timing line
    "doc_module": ("nce_ref",),
    "backreferences_dir": "api/generated/backreferences",
    "reference_url": {"nce_ref": None},
    "inspect_global_variables": False,
}

# -- matplotlib's plot directive (the performance page's asv figure) --------------------
plot_include_source = False
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 110)]
plot_rcparams = {"figure.figsize": (9.0, 3.6)}
plot_apply_rcparams = True
plot_working_directory = str(HERE)

# -- copy button: strip the doctest and shell prompts -----------------------------------
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True

# -- HTML -----------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"nce_ref {release}"
html_static_path = ["_static"]
html_css_files = ["nce_ref.css"]
html_show_sourcelink = False
html_copy_source = False
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "use_edit_page_button": False,
    "icon_links": [],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
    "secondary_sidebar_items": ["page-toc"],
    "header_links_before_dropdown": 6,
}
html_sidebars = {"index": [], "getting_started": [], "theory": []}
html_context = {"default_mode": "light"}


# -- the API pages list every public name ------------------------------------------------
#: the modules whose ``__all__`` the API reference must cover (submodules are skipped)
API_MODULES = (
    "nce_ref",
    "nce_ref.mi",
    "nce_ref.mi.exact",
    "nce_ref.mi.critics",
    "nce_ref.mi.sample",
    "nce_ref.mi.theory",
    "nce_ref.sharded",
    "nce_ref.testing",
    "nce_ref.interop.torch",
    "nce_ref.interop.jax",
)


def _documented_names() -> set[str]:
    """Every ``module.name`` an autosummary table of ``docs/api/*.rst`` lists."""
    names: set[str] = set()
    for page in (HERE / "api").glob("*.rst"):
        module = None
        in_table = False
        for line in page.read_text(encoding="utf-8").splitlines():
            m = re.match(r"\.\. (?:current)?module:: (\S+)", line.strip())
            if m:
                module = m.group(1)
                continue
            if line.strip().startswith(".. autosummary::"):
                in_table = True
                continue
            if in_table:
                if not line.strip() or line.strip().startswith(":"):
                    continue
                if not line.startswith("   "):
                    in_table = False
                    continue
                name = line.strip()
                names.add(name if name.startswith("nce_ref.") else f"{module}.{name}")
    return names


def _check_api_coverage(app) -> None:
    """Warn (an error under ``-W``) for a public name the API reference leaves out."""
    from sphinx.util import logging

    log = logging.getLogger("nce_ref.api")
    documented = _documented_names()
    for modname in API_MODULES:
        mod = importlib.import_module(modname)
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name, None)
            if type(obj).__name__ == "module":
                continue  # a submodule: its own entry in API_MODULES covers it
            if name.isupper():
                continue  # constants (ALGORITHMS) are described in their functions' docs
            if f"{modname}.{name}" not in documented:
                log.warning(f"{modname}.{name} is public (in __all__) but no docs/api/*.rst "
                            "autosummary table lists it", type="nce_ref", subtype="api")


def setup(app):
    app.connect("builder-inited", _check_api_coverage)
