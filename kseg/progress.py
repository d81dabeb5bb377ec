"""A one-line progress bar for long work outside ``model.fit`` (dataset scans, an export's fine-tuning)."""

import sys

__all__ = ["Progress"]


class Progress:
    """A progress bar on stderr for work of at least ``min_total`` items; where stderr is not a terminal (a log
    file, CI), one line at the end instead of a hundred carriage returns.

    Example:
        >>> bar = Progress(3, "checking", min_total=1)   # doctest: +SKIP
        >>> for done in (1, 2, 3):                       # doctest: +SKIP
        ...     bar.update(done, note=f"loss {0.5 / done:.2f}")
    """

    def __init__(self, total, label, min_total=20, stream=None, width=30):
        self.total, self.label, self.width = total, label, width
        self.stream = stream or sys.stderr
        self.active = total >= min_total
        self.step = max(1, total // 100)
        self.live = getattr(self.stream, "isatty", lambda: False)()

    def update(self, done, note=""):
        """``done`` of ``total`` items finished; ``note`` (e.g. the current loss) follows the count."""
        note = f"  {note}" if note else ""
        if self.active and not self.live:
            if done == self.total:
                self.stream.write(f"{self.label}: {done}/{self.total}{note}\n")
            return
        if self.active and (done % self.step == 0 or done == self.total):
            filled = self.width * done // self.total
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total}"
                              f"{note}\033[K")
            if done == self.total:
                self.stream.write("\n")
            self.stream.flush()
