"""One rule for progress bars: ``show_progress=None`` means "on when the rankstack logger logs at INFO"."""

from __future__ import annotations

import logging


def progress_enabled(show_progress: bool | None) -> bool:
    if show_progress is None:
        return logging.getLogger("rankstack").isEnabledFor(logging.INFO)
    return bool(show_progress)
