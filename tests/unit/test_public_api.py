import subprocess
import sys

import sqft_intel


def test_all_names_import():
    for name in sqft_intel.__all__:
        assert getattr(sqft_intel, name) is not None, name


def test_lean_import():
    code = ("import sys, sqft_intel; heavy = [m for m in ('openvino', 'nncf', 'optimum', 'peft', "
            "'transformers') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
