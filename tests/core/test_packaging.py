"""Every third-party module the package imports is a declared dependency (a fresh machine installs only those)."""

import ast
import re
import sys
import tomllib

from ..helpers import REPO

IMPORT_TO_DISTRIBUTION = {"open_clip": "open_clip_torch", "PIL": "pillow", "sklearn": "scikit-learn", "bson": "pymongo"}


def _imported_top_level_modules(folder):
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_every_imported_third_party_module_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!~\[ ;]", dep)[0].lower().replace("-", "_") for dep in project["dependencies"]}
    imported = _imported_top_level_modules(REPO / "fiftyone_maskinversion") | _imported_top_level_modules(
        REPO / "plugin")
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "fiftyone_maskinversion"}
    missing = {m for m in third_party
               if IMPORT_TO_DISTRIBUTION.get(m, m).lower().replace("-", "_") not in declared}
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
    assert {"matplotlib", "sklearn"} <= third_party  # the check sees the imports that were once missing
