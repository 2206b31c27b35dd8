"""WMT translation from English: ``translate English to German: ...`` (T5's En-De/En-Fr/En-Ro).

Only English-German rows are shipped (data/wmt_en_de, Moses-tokenized OpenNMT sample); En-Fr and
En-Ro read WMT14 fr-en / WMT16 ro-en from the hub.
"""

from __future__ import annotations

import functools

from tasks import metrics, preprocessors
from tasks.sources import shipped_or_hub
from tasks.task import Task, TaskRegistry

_PAIRS = {
    "wmt_ende": ("de", "wmt_en_de", "wmt/wmt14", "de-en"),
    "wmt_enfr": ("fr", "", "wmt/wmt14", "fr-en"),
    "wmt_enro": ("ro", "", "wmt/wmt16", "ro-en"),
}

for _name, (_tgt, _local, _hub, _config) in _PAIRS.items():
    TaskRegistry.add(
        Task(
            _name,
            shipped_or_hub(_local, _hub, _config),
            [functools.partial(preprocessors.translate, source_language="en", target_language=_tgt)],
            metric_fns=[metrics.bleu],
            description=f"WMT English to {_tgt} (T5 format)",
        ),
        replace=True,
    )
