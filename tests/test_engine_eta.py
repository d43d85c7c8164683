"""EtaHook: one training-time estimate, timed over a window after the warm-up iterations."""
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
