"""Regenerates the committed parity fixtures under fixtures/.

    python fraud-core/tests/parity/make_fixtures.py

Needs xgboost and lightgbm (the test command's venv has them). The fixtures record which
library versions made them in fixtures/VERSIONS.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lightgbm  # noqa: E402
import xgboost  # noqa: E402

from parity_models import ALL_CASES, make_case  # noqa: E402

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
for name in ALL_CASES:
    make_case(name, os.path.join(here, name), n_train=3000, n_test=400)
    print("wrote", name)
with open(os.path.join(here, "VERSIONS"), "w") as f:
    f.write(f"xgboost {xgboost.__version__}\nlightgbm {lightgbm.__version__}\n")
