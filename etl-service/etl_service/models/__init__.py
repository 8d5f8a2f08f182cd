"""Models: views and rollups defined as SQL files, built into every snapshot.

`definitions` reads the files (front matter, one SELECT, dependencies from
DuckDB's parser, build order); `builder` builds them into the working DuckDB
after the merges, in one transaction; `sql/` holds the bundled models.
"""

from etl_service.models.builder import ModelBuild, ModelBuilder
from etl_service.models.definitions import (
    BUNDLED_MODELS_DIR,
    ModelDefinition,
    build_order,
    configured_models,
    load_models,
    parse_model,
    usable_models,
)

__all__ = [
    "BUNDLED_MODELS_DIR",
    "ModelBuild",
    "ModelBuilder",
    "ModelDefinition",
    "build_order",
    "configured_models",
    "load_models",
    "parse_model",
    "usable_models",
]
