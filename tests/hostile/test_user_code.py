"""Bad ``--model`` / ``--dataset`` names: one line, exit 2, nothing written."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

USER_CODE = (Path(__file__).parent.parent / "files" / "mycode.py").read_text()


BAD_USER_CODE = [
    (["--model", "nomodule:Net"], "no module named 'nomodule'"),
    (["--model", "mycode:Nett"], "did you mean Net"),
    (["--model", "mycode"], "unknown model 'mycode'"),
    (["--model", "resnt"], "unknown model 'resnt'"),
    (["--model", "dropout"], "dropout is a regularizer plugin, not a model"),
    (["--dataset", "mycode:nothing"], "has no attribute 'nothing'"),
    (["--dataset", "mycode"], "unknown dataset 'mycode'"),
    (["--model", "mlp/big"], "mlp has no variants"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_USER_CODE, ids=[" ".join(a) for a, _ in BAD_USER_CODE])
def test_bad_model_or_data_set_names_are_one_line(refused, sandbox, argv, message):
    (sandbox.root / "mycode.py").write_text(USER_CODE)
    sandbox.before["mycode.py"] = hashlib.sha256(USER_CODE.encode()).hexdigest()
    sys.path.insert(0, str(sandbox.root))
    try:
        outcome = refused("run", *argv, "--output-dir", "runs")
    finally:
        sys.path.remove(str(sandbox.root))
        sys.modules.pop("mycode", None)
    assert message in outcome.line


