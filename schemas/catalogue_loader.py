"""Loading the catalogue at a URL: a catalogue file (``schemas.catalogue``) or a folder of title
folders laid out by convention (``schemas.catalogue_folder``), both validated row by row by
``schemas.catalogue.validate_rows``."""

from __future__ import annotations

from dubline.schemas.catalogue import Catalogue, load_catalogue_file
from dubline.schemas.catalogue_folder import is_folder, load_folder_catalogue


def load_catalogue(url: str, check_files: bool = True) -> Catalogue:
    """Read and validate the catalogue at ``url``: a file, or a folder laid out by convention."""
    if is_folder(url):
        return load_folder_catalogue(url, check_files)
    return load_catalogue_file(url, check_files)
