import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Real data for end-to-end checks lives in ../shared/data beside the checkout; tests skip when it is absent.
SHARED_DATA = Path(os.environ.get("GPT_SHARED_DATA", ROOT.parent / "shared" / "data"))


class RunsCode:
    """Unpickling this calls open(path, "w"): the file appears if and only if code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture
def shared_file():
    def get(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.is_file():
            pytest.skip(f"{path} not present (see README: data for end-to-end checks)")
        return path

    return get


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from gpt.tokenizer import GPT2Tokenizer

    return GPT2Tokenizer()
