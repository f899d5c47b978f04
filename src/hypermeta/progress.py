"""A progress bar for ``fit`` (installed by the CLI; pass it yourself in scripts)."""

from __future__ import annotations

from typing import Any

from hypermeta.train import Callback


class ProgressBar(Callback):
    """A tqdm bar with the latest training loss, validation metric and ETA.

    Example:
        >>> hypermeta.fit(config, "runs/sin", callbacks=[hypermeta.ProgressBar()])
    """

    def __init__(self, **tqdm_options: Any) -> None:
        self.options = {"unit": "step", "dynamic_ncols": True, **tqdm_options}
        self.bar: Any = None
        self.postfix: dict[str, str] = {}

    def on_start(self, *, description: str, total: int, initial: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=description, **self.options)

    def on_step(self, step: int, loss: float | None) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if loss is not None:
            self.postfix["loss"] = f"{loss:.4f}"
            self.bar.set_postfix(self.postfix)

    def on_validate(self, step: int, result: dict[str, float]) -> None:
        if self.bar is not None:
            self.postfix["val"] = f"{result['mean']:.4f}"
            self.bar.set_postfix(self.postfix)

    def on_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
