"""Progress reporting without printing from library code.

Library stages take a `Reporter`; the default one logs. The CLI passes a `TqdmReporter`, so progress
bars live in the CLI layer only.
"""

from __future__ import annotations

import logging

log = logging.getLogger("modelworks")


class Reporter:
    """Logs messages; bars are no-ops. Subclass to draw them."""

    def info(self, msg: str) -> None:
        log.info(msg)

    def start(self, total: int, desc: str, initial: int = 0, unit: str = "it") -> None:
        self._desc = desc

    def update(self, n: int = 1, **stats) -> None:
        pass

    def close(self) -> None:
        pass


class TqdmReporter(Reporter):
    def __init__(self) -> None:
        self._bar = None

    def info(self, msg: str) -> None:
        from tqdm import tqdm

        tqdm.write(msg)

    def start(self, total: int, desc: str, initial: int = 0, unit: str = "it") -> None:
        from tqdm import tqdm

        self.close()
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)

    def update(self, n: int = 1, **stats) -> None:
        if self._bar is None:
            return
        if stats:
            self._bar.set_postfix(stats, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
