"""TFDS builders of this project, written as ArrayRecord and read without TensorFlow.

- `folder_csv` (`FolderCsv`): a folder of images plus a label CSV; lesion-grouped split.
- `isic2018` (`Isic2018`): ISIC 2018 Task 3 from the official downloads (manual dir).

Build with `python -m input_pipeline.build` (or `input_pipeline.build.build_dataset`); read with
`tfds.builder_from_directory(path).as_data_source(split)` or `input_pipeline.sources.get_split`.
"""

from input_pipeline.builders.base import METADATA_KEY, BuildReport
from input_pipeline.builders.folder_csv import FolderCsv, FolderCsvConfig, folder_csv_config
from input_pipeline.builders.isic2018 import Isic2018, Isic2018Config, isic2018_config

BUILDERS = {"folder_csv": FolderCsv, "isic2018": Isic2018}
# Config used when none is named (folder_csv configs are made at build time and named freely).
DEFAULT_CONFIGS = {"folder_csv": "default", "isic2018": "short256"}

__all__ = [
    "BUILDERS",
    "DEFAULT_CONFIGS",
    "METADATA_KEY",
    "BuildReport",
    "FolderCsv",
    "FolderCsvConfig",
    "Isic2018",
    "Isic2018Config",
    "folder_csv_config",
    "isic2018_config",
]
