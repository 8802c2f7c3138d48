"""Regenerates the committed parity fixtures under fixtures/.

    python fraud-core/tests/parity/make_fixtures.py              # every case, current libraries
    python fraud-core/tests/parity/make_fixtures.py --xgboost2   # xgb2_* cases, run under XGBoost 2.x

Needs xgboost and lightgbm (the test command's venv has them). The XGBoost 2.x cases need a
venv with `xgboost-cpu>=2.1,<2.2` and numpy only. Each run records the library versions in
fixtures/VERSIONS (2.x runs in fixtures/VERSIONS-xgboost2).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import xgboost  # noqa: E402

from parity_models import ALL_CASES, XGB_CASES, make_case, make_xgb_case  # noqa: E402

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
if "--xgboost2" in sys.argv:
    assert xgboost.__version__.startswith("2."), xgboost.__version__
    for name in ("xgb_missing", "xgb_categorical"):
        make_xgb_case(name, os.path.join(here, name.replace("xgb_", "xgb2_")), n_train=3000, n_test=400)
        print("wrote", name.replace("xgb_", "xgb2_"))
    with open(os.path.join(here, "VERSIONS-xgboost2"), "w") as f:
        f.write(f"xgboost {xgboost.__version__}\n")
else:
    import lightgbm

    for name in ALL_CASES:
        make_case(name, os.path.join(here, name), n_train=3000, n_test=400)
        print("wrote", name)
    with open(os.path.join(here, "VERSIONS"), "w") as f:
        f.write(f"xgboost {xgboost.__version__}\nlightgbm {lightgbm.__version__}\n")
