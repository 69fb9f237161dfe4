"""pytest over docs/: the Markdown pages' doctests run (``--doctest-glob='*.md'``);
the Sphinx configuration, the gallery's scripts and everything the build generates
are not test modules (importing them would run a build step, an example or a
launcher script such as ``examples/sharded_torch.py``).
"""

collect_ignore = ["conf.py"]
collect_ignore_glob = [
    "examples/*.py",  # the gallery (run by sphinx-gallery) and the sharded_*.py launchers
    "auto_examples/*",  # sphinx-gallery's output
    "api/generated/*",  # autosummary's output
    "_build/*",
    "_data/*.py",  # the performance page's plot script (run by the plot directive)
    "_static/*",
    "_templates/*",
]
