import rq_hf


def test_version_is_a_string():
    assert isinstance(rq_hf.__version__, str) and rq_hf.__version__


def test_import_leaves_the_optional_extras_alone():
    """`import rq_hf` imports neither the app's gradio (demo extra) nor onnx / onnxruntime (onnx extra)."""
    import subprocess
    import sys

    code = "import sys, rq_hf; print(sorted({'gradio', 'onnx', 'onnxruntime', 'onnxscript'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
