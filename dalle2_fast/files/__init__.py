"""One reader for every file dalle2_fast accepts.

Every failure is a ``CheckpointError`` whose one-line message names the file and what was wrong
(``file: field.path: expected ..., got ...``): never a library traceback, a MemoryError or an
OverflowError, never an unpickled object. ``formats`` sniffs files by their magic bytes and
reads safetensors headers (bounded by the file size before reading) and JSON objects;
``configs`` validates what they hold (typed configs, the pipeline manifest). Which file is
checked where: ``docs/reliability.md``. Imports only the standard library, torch and
safetensors (below models in the layering).
"""
from dalle2_fast.files.configs import (MAX_CONFIG_INT, PIPELINE_DEFAULTS, PIPELINE_STAGES, SIZE_FIELDS,
                                       build_config, check_value, config_from_dict, read_pipeline_manifest)
from dalle2_fast.files.formats import (KINDS, SAFETENSORS_DTYPES, CheckpointError, SafetensorsHeader, describe,
                                       load_safetensors, parse_json_object, read_json_object,
                                       read_safetensors_header, sniff)

__all__ = ["CheckpointError", "sniff", "describe", "KINDS", "read_safetensors_header", "load_safetensors",
           "SafetensorsHeader", "SAFETENSORS_DTYPES", "read_json_object", "parse_json_object", "config_from_dict",
           "build_config", "check_value", "read_pipeline_manifest", "SIZE_FIELDS", "MAX_CONFIG_INT",
           "PIPELINE_DEFAULTS", "PIPELINE_STAGES"]
