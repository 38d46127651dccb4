import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the project is a flat folder of scripts, not a package

# The real public data the tests read (benchmarks, corpora). CI has it beside the checkout.
SHARED_DATA = Path(os.environ.get("NANODUAL_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"shared data not found at {SHARED_DATA}; set NANODUAL_SHARED_DATA")
    return SHARED_DATA
