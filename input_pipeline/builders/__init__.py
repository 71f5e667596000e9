"""TFDS builders of this project, written as ArrayRecord and read without TensorFlow.

- `folder_csv` (`FolderCsv`): a folder of images plus a label CSV; lesion-grouped split.
- `isic2018` (`Isic2018`): ISIC 2018 Task 3 from the official downloads (manual dir).
- `isic2019` (`Isic2019`): ISIC 2019 from the official downloads; lesion-grouped split.
- `pad_ufes20` (`PadUfes20`): PAD-UFES-20 from the Mendeley Data download; split by patient.

Each builder owns its class list (`ISIC_CLASSES`, `ISIC2019_CLASSES`, `PAD_UFES20_CLASSES`;
`folder_csv` takes the classes its CSV names); the built dataset records it.

Build with `python -m input_pipeline.build` (or `input_pipeline.build.build_dataset`); read with
`tfds.builder_from_directory(path).as_data_source(split)` or `input_pipeline.sources.get_split`.
"""

from input_pipeline.builders.base import METADATA_KEY, BuildReport
from input_pipeline.builders.folder_csv import FolderCsv, FolderCsvConfig, folder_csv_config
from input_pipeline.builders.isic2018 import Isic2018, Isic2018Config, isic2018_config
from input_pipeline.builders.isic2019 import Isic2019, Isic2019Config, isic2019_config
from input_pipeline.builders.pad_ufes20 import PadUfes20, PadUfes20Config, pad_ufes20_config

BUILDERS = {
    "folder_csv": FolderCsv,
    "isic2018": Isic2018,
    "isic2019": Isic2019,
    "pad_ufes20": PadUfes20,
}
# Config used when none is named (folder_csv configs are made at build time and named freely).
DEFAULT_CONFIGS = {
    "folder_csv": "default",
    "isic2018": "short256",
    "isic2019": "short256",
    "pad_ufes20": "short256",
}
# Builders that read a manual dir of official downloads (the others a --source folder).
MANUAL_DIR_BUILDERS = ("isic2018", "isic2019", "pad_ufes20")

__all__ = [
    "BUILDERS",
    "DEFAULT_CONFIGS",
    "METADATA_KEY",
    "BuildReport",
    "FolderCsv",
    "FolderCsvConfig",
    "Isic2018",
    "Isic2018Config",
    "Isic2019",
    "Isic2019Config",
    "MANUAL_DIR_BUILDERS",
    "PadUfes20",
    "PadUfes20Config",
    "folder_csv_config",
    "isic2018_config",
    "isic2019_config",
    "pad_ufes20_config",
]
