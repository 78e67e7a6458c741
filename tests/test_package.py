import rq_hf


def test_version_is_a_string():
    assert isinstance(rq_hf.__version__, str) and rq_hf.__version__
