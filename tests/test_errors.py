"""errors.exit_report: the one mapping from an exception to the line the user reads and the
exit status, checked on the real exceptions Hydra, OmegaConf and lossbench raise."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from lossbench.config.schema import register_schemas
from lossbench.errors import (Diverged, Interrupted, UserError, error_line, exit_report,
                              instantiation_mistake)


def composition_error(*overrides: str) -> Exception:
    register_schemas()
    with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
        with pytest.raises(Exception) as caught:
            compose(config_name="config", overrides=list(overrides))
    return caught.value


def instantiation_error(config: dict) -> InstantiationException:
    with pytest.raises(InstantiationException) as caught:
        instantiate(config)
    return caught.value


def test_lossbench_errors_and_ctrl_c_keep_their_statuses():
    assert exit_report(UserError("dataset.path=x: no such file")) == (
        "error: dataset.path=x: no such file", 2)
    assert exit_report(Diverged("training diverged at epoch 1")) == (
        "training diverged at epoch 1", 3)
    assert exit_report(Interrupted("stopped by SIGTERM", exit_code=143)) == (
        "stopped by SIGTERM", 143)
    assert exit_report(KeyboardInterrupt()) == ("stopped by Ctrl-C", 130)
    assert exit_report(RuntimeError("a bug")) is None  # keeps its traceback
    assert exit_report(SystemExit(0)) is None


def test_a_signal_that_stops_at_once_exits_128_plus_its_number():
    import signal

    from lossbench.errors import Stopped

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        assert exit_report(Stopped(signum)) == (
            f"stopped by {signal.Signals(signum).name}", 128 + signum)
    assert exit_report(Stopped(signal.SIGINT)) == ("stopped by Ctrl-C", 130)


def _initialisation_failed_by(stop: BaseException) -> ImportError:
    """What a compiled module's import raises when a signal arrives while it initialises (seen
    with Ctrl-C during start-up: scipy's `ImportError: initialization failed`, raised from the
    stop)."""
    try:
        try:
            raise stop
        except KeyboardInterrupt as interrupted:
            raise ImportError("initialization failed") from interrupted
    except ImportError as err:
        return err


def test_an_import_that_a_stop_signal_broke_is_reported_as_that_stop():
    import signal

    from lossbench.errors import Stopped, stopped_by

    broken = _initialisation_failed_by(Stopped(signal.SIGINT))
    assert exit_report(broken) == ("stopped by Ctrl-C", 130)
    assert exit_report(_initialisation_failed_by(Stopped(signal.SIGTERM))) == (
        "stopped by SIGTERM", 143)
    assert exit_report(_initialisation_failed_by(KeyboardInterrupt())) == ("stopped by Ctrl-C", 130)
    # an import error of its own keeps its traceback, as does one merely raised near a stop
    assert stopped_by(ImportError("no module named x")) is None
    assert exit_report(ImportError("no module named x")) is None


def test_a_sweep_job_broken_by_a_stop_signal_stops_and_is_not_recorded_as_failed():
    import signal

    from lossbench.errors import Stopped
    from lossbench.experiment.sweep import _run_stoppable

    def run(cfg):
        raise _initialisation_failed_by(Stopped(signal.SIGTERM))

    with pytest.raises(Stopped) as caught:
        _run_stoppable(run, None, None)
    assert caught.value.exit_code == 143

    def bug(cfg):
        raise ImportError("no module named x")

    with pytest.raises(ImportError):  # not a stop: the job fails as before
        _run_stoppable(bug, None, None)


def test_composition_errors_are_user_errors_only_while_composing():
    err = composition_error("optimizer=adamm")
    line, status = exit_report(err, composing=True)
    assert status == 2
    assert line == ("error: Could not find 'optimizer/adamm' (did you mean adam?)\n"
                    "available options in 'optimizer': adam, adamw, rmsprop, sgd")
    assert exit_report(err) is None  # raised by a running job, the same type is a bug
    line, _ = exit_report(composition_error("trainer.epohcs=3"), composing=True)
    assert line.endswith("\ndid you mean trainer.epochs?")
    line, _ = exit_report(composition_error("dataset=moons", "dataset.nois=0.1"), composing=True)
    assert line.endswith("\ndid you mean dataset.noise?")


def test_a_config_object_that_cannot_be_built_is_told_by_its_cause():
    missing = instantiation_error({"_target_": "nowhere.Loss"})
    assert isinstance(missing.__cause__, ImportError)
    assert exit_report(missing) == (
        "error: Error locating target 'nowhere.Loss': Are you sure that module 'nowhere' is "
        "installed?", 2)
    wrong = instantiation_error({"_target_": "torch.nn.CrossEntropyLoss", "foo": 1})
    assert "unexpected keyword argument 'foo'" in instantiation_mistake(wrong)
    assert error_line(wrong).startswith("TypeError: ")  # a sweep records the cause


def test_a_bug_inside_a_config_object_keeps_its_traceback():
    err = instantiation_error({"_target_": "math.sqrt", "_args_": ["x"]})  # TypeError: a mistake
    assert exit_report(err) is not None
    err = instantiation_error({"_target_": "json.loads", "_args_": ["{"]})
    assert isinstance(err.__cause__, ValueError) and exit_report(err) is not None
    err = instantiation_error({"_target_": "operator.truediv", "_args_": [1, 0]})
    assert isinstance(err.__cause__, ZeroDivisionError)
    assert exit_report(err) is None
