"""The gauntlet: bad inputs and bad output paths, command by command, as a user types them (cases in gauntlet.py).

Each case must end with exit code 2, one error line naming the culprit (after the settings line and progress
lines where work had started), no traceback, the user's files unchanged
(hashed before and after) and nothing left behind in the folder.
"""

from __future__ import annotations

import pytest

from gauntlet import CASES, build_work, folder_state
from helpers import the_error_line
from ortforge.cli import main


@pytest.fixture
def work(tmp_path):
    return build_work(tmp_path)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_inputs_get_one_line_and_harm_nothing(work, capfd, case):
    before = folder_state(work)
    assert main(case.argv(work)) == 2
    error = the_error_line(capfd.readouterr().err)  # file-descriptor level: ORT's C++ log would show here
    assert all(part in error for part in case.parts), error
    assert folder_state(work) == before  # inputs unchanged, nothing written, nothing left behind
