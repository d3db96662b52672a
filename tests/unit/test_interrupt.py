"""SIGINT and SIGTERM become one Interrupted exception inside ``interruptible``."""

from __future__ import annotations

import os
import signal

import pytest

from sweeper.interrupt import Interrupted, exit_code, interruptible, report_and_exit


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_inside_raises_interrupted_with_the_shell_exit_code(signum, code):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted) as caught, interruptible():
        os.kill(os.getpid(), signum)
        for _ in range(10**6):  # the handler runs between bytecodes, right after the kill
            pass
        pytest.fail("the signal did not interrupt")
    assert caught.value.signame == signal.Signals(signum).name
    assert isinstance(caught.value, KeyboardInterrupt)  # unwinds like Ctrl-C
    assert exit_code(caught.value) == code
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_report_and_exit_prints_one_line_and_exits_with_the_code(capsys):
    with pytest.raises(SystemExit) as exited:
        report_and_exit(KeyboardInterrupt(), "the run stopped")
    assert exited.value.code == 130
    assert capsys.readouterr().err == "interrupted (SIGINT): the run stopped\n"
