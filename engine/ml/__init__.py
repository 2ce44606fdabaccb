"""The ML core: device choice, pipeline loading, LoRA training and generation.

Importing it quiets library messages that say nothing to an operator of this service (filters on the
libraries' own loggers, installed before diffusers or transformers is imported).
"""

from __future__ import annotations

import logging


class _DropMessages(logging.Filter):
    """Drop log records whose message contains one of `fragments`."""

    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


# transformers 5 looks up every image processor diffusers may use; without torchvision (which the engine
# never needs: it has its own image code) it warns once per processor and falls back to the PIL one.
logging.getLogger("transformers.utils.import_utils").addFilter(
    _DropMessages("requires torchvision (not installed)")
)
# Offline without HF_HUB_OFFLINE=1, diffusers says so in a multi-line warning before falling back to the
# cache; a model that still does not load is explained by engine.ml.pipeline in one line.
logging.getLogger("diffusers.pipelines.pipeline_utils").addFilter(
    _DropMessages("Couldn't connect to the Hub")
)
