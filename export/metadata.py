"""Model metadata inside the ``.tflite`` file: a JSON buffer in the flatbuffer's ``metadata`` list under the name
``"kseg"``, so an exported model describes itself (labels, palette, normalisation, output kind, input size, export
mode). The edge runtime reads it back without TensorFlow (``edge.runtime.read_metadata``).

Example:
    >>> from export.metadata import embed_metadata
    >>> data = embed_metadata(flatbuffer, {"labels": ["bg", "cell"], "input_size": [256, 256]})  # doctest: +SKIP
"""

import json

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from export.flatbuffer import dump, load

METADATA_NAME = "kseg"


def embed_metadata(flatbuffer, meta, model=None):
    """Return the flatbuffer with ``meta`` (a JSON-serialisable dict) stored as metadata ``"kseg"``, replacing an
    earlier kseg entry; the converter's own entries (``min_runtime_version``, ...) stay.

    Args:
        flatbuffer: ``.tflite`` bytes.
        meta: the dict to store.
        model: an already loaded ``schema.ModelT`` of the same bytes, to write together with other edits.
    """
    model = model if model is not None else load(flatbuffer)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    entries = [m for m in (model.metadata or []) if m.name != METADATA_NAME.encode()]
    old = [m.buffer for m in (model.metadata or []) if m.name == METADATA_NAME.encode()]
    if old:  # reuse the old buffer slot: a buffer index may be shared, so never delete from the list
        model.buffers[old[0]] = buffer
        index = old[0]
    else:
        model.buffers.append(buffer)
        index = len(model.buffers) - 1
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME.encode(), index
    model.metadata = entries + [entry]
    return dump(model)
