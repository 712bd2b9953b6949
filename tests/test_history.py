"""The lab's run history: the whole run from byte 0 in bounded memory, spikes kept."""

from __future__ import annotations

import numpy as np

from mugpt.serve.history import LOSS_CAP, RunHistory, empty_loss, fold_loss, history_from_losses


def _update(x0: int, count: int, size: int, mean: float = 4.0) -> dict:
    xs = list(range(x0, x0 + count * size, size))
    return {
        "type": "update",
        "pos": xs[-1] + size,
        "bpb": mean,
        "loss": {
            "x": xs,
            "n": [size] * count,
            "mean": [mean] * count,
            "min": [mean - 1] * count,
            "max": [mean + 1] * count,
            "ema": [mean] * count,
            "skips": [0] * count,
            "replays": [0] * count,
        },
    }


def test_history_keeps_the_whole_run_from_byte_0_in_bounded_bins() -> None:
    history = RunHistory()
    pos, sizes = 0, []
    while pos < 2_000_000:
        message = _update(pos, 25, 40)
        if pos == 1_000_000:
            message["loss"]["max"][3] = 17.0  # one surprising byte in the middle of the run
        history.apply(message)
        pos = message["pos"]
        sizes.append(len(history.loss["x"]))
    loss = history.loss
    assert max(sizes) <= LOSS_CAP
    assert loss["x"][0] == 0 and history.bpb["x"][0] == 40 * 25
    width = loss["width"]
    assert all(x == i * width for i, x in enumerate(loss["x"]))  # equal bins, no gaps
    assert sum(loss["n"]) == pos and loss["x"][-1] + loss["n"][-1] == pos
    assert max(loss["max"]) == 17.0 and min(loss["min"]) == 3.0
    assert all(abs(m - 4.0) < 1e-9 for m in loss["mean"])


def test_a_second_page_folding_the_hello_and_later_updates_draws_the_same_bins() -> None:
    live, server = empty_loss(), RunHistory()
    updates = [_update(i * 500, 10, 50, mean=float(i % 7)) for i in range(400)]
    for message in updates[:250]:
        fold_loss(live, message["loss"])
        server.apply(message)
    reloaded = {k: list(v) if isinstance(v, list) else v for k, v in server.loss.items()}
    for message in updates[250:]:
        fold_loss(live, message["loss"])
        fold_loss(reloaded, message["loss"])
    assert reloaded == live and live["x"][0] == 0


def test_a_finished_run_directory_is_binned_the_same_way() -> None:
    losses = np.full(100_000, 3.0)
    losses[54_321] = 12.5
    history = history_from_losses(losses, np.zeros(losses.size, np.uint8), {})
    loss = history.loss
    assert loss["x"][0] == 0 and len(loss["x"]) <= LOSS_CAP
    assert sum(loss["n"]) == losses.size and max(loss["max"]) == 12.5
