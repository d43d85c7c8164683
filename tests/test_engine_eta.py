"""EtaHook: training-time estimates, timed over windows after the first iterations and after the LR warm-up."""
import logging
from types import SimpleNamespace

import cad.engine.eta as eta
from cad.engine.eta import EtaHook, eta_message


def test_eta_message_rounds_to_seconds():
    assert eta_message(1.5, 100) == "ETA: 100 iterations left at 1.50 s/iter = about 2 min 30 s of training"
    assert eta_message(0.004, 1000) == "ETA: 1000 iterations left at 0.00 s/iter = about 0 min 04 s of training"


def test_hook_times_the_window_after_skipped_iterations(monkeypatch, caplog):
    # Iteration i ends at clock 10 * i + i**2: steps get slower, so the window matters.
    trainer = SimpleNamespace(start_iter=5, max_iter=105, iter=None)
    monkeypatch.setattr(eta.time, "perf_counter", lambda: 10 * trainer.iter + trainer.iter**2)
    hook = EtaHook(window=4, skip=2)
    hook.trainer = trainer
    hook.before_train()
    with caplog.at_level(logging.INFO, logger="detectron2.cad.eta"):
        for trainer.iter in range(5, 105):
            hook.after_step()
    # Timed iterations 7..10: clock(10) - clock(6) = 200 - 96 = 104 s over 4 iterations; 94 left after 10.
    assert [r.getMessage() for r in caplog.records] == [eta_message(26.0, 94)]


def _messages(monkeypatch, caplog, start_iter: int, max_iter: int, **hook_args):
    trainer = SimpleNamespace(start_iter=start_iter, max_iter=max_iter, iter=None)
    monkeypatch.setattr(eta.time, "perf_counter", lambda: 10 * trainer.iter + trainer.iter**2)
    hook = EtaHook(**hook_args)
    hook.trainer = trainer
    hook.before_train()
    with caplog.at_level(logging.INFO, logger="detectron2.cad.eta"):
        for trainer.iter in range(start_iter, max_iter):
            hook.after_step()
    return [r.getMessage() for r in caplog.records]


def test_second_estimate_after_the_lr_warmup(monkeypatch, caplog):
    # Window 50..53: clock(53) - clock(49) = 3339 - 2891 = 448 s over 4 iterations; 51 left after 53.
    assert _messages(monkeypatch, caplog, 5, 105, window=4, skip=2, warmup=50) == [
        eta_message(26.0, 94), eta_message(112.0, 51, "ETA after the LR warm-up")]


def test_no_second_estimate_when_warmup_is_over_or_does_not_fit(monkeypatch, caplog):
    # Resumed after the warm-up (start 60 > warm-up 50): one estimate, window 62..65.
    assert _messages(monkeypatch, caplog, 60, 105, window=4, skip=2, warmup=50) == [eta_message(136.0, 39)]
    caplog.clear()
    # The warm-up window 102..105 would end after the last iteration (104).
    assert _messages(monkeypatch, caplog, 5, 105, window=4, skip=2, warmup=102) == [eta_message(26.0, 94)]
