"""Models: views and rollups defined as SQL files, built into every snapshot.

definitions.py  reading the files: front matter, one SELECT, dependencies from
                DuckDB's parser, build order, which models fit the synced tables
builder.py      building them into the working DuckDB after the merges, in one
                transaction; table models only when an input changed
sql/            the bundled models
"""

from etl_service.models.builder import ModelBuild, ModelBuilder
from etl_service.models.definitions import (
    BUNDLED_MODELS_DIR,
    ModelDefinition,
    configured_models,
    load_models,
    usable_models,
)

__all__ = [
    "BUNDLED_MODELS_DIR",
    "ModelBuild",
    "ModelBuilder",
    "ModelDefinition",
    "configured_models",
    "load_models",
    "usable_models",
]
