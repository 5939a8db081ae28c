"""The architecture, checked in fresh processes: the core, evaluation and synthetic packages never import
FiftyOne, and the core never imports the synthetic package (shipped weights register themselves)."""

import subprocess
import sys

import pytest

PROBE = """
import sys
import {module}
{extra}
print(sorted(m for m in sys.modules if m == "fiftyone" or m.startswith(("fiftyone.", "fiftyone_maskinversion.synthetic"))))
"""


def _imported(module: str, extra: str = "") -> str:
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module, extra=extra)], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("module", ["fiftyone_maskinversion", "fiftyone_maskinversion.core"])
def test_the_core_imports_neither_fiftyone_nor_the_synthetic_package(module):
    assert _imported(module) == "[]"


def test_evaluation_and_synthetic_do_not_import_fiftyone():
    loaded = _imported("fiftyone_maskinversion.evaluation", "import fiftyone_maskinversion.synthetic.training")
    assert "'fiftyone'" not in loaded and "fiftyone." not in loaded.replace("fiftyone_maskinversion.", "")


def test_shipped_weights_register_through_their_entry_point():
    extra = ("from fiftyone_maskinversion import load_backbone\n"
             "b = load_backbone('mi-synth-vit', 'synthetic', image_size=64, device='cpu')\n"
             "assert b.model_name == 'mi-synth-vit'")
    loaded = _imported("fiftyone_maskinversion", extra)
    assert "'fiftyone_maskinversion.synthetic.weights'" in loaded and "'fiftyone'" not in loaded
