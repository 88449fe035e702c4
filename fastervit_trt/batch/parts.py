"""The output folder: numbered Parquet parts, each written whole under a temporary name and
then renamed, so an interrupted run leaves only complete parts and a re-run reads which
files are done from their ``path`` column."""

from __future__ import annotations

import re
from typing import Any

from ..errors import OutputError
from .files import open_uri

PART_NAME = re.compile(r"part-(\d{5,})\.parquet")


class Parts:
    """The parts in folder ``uri`` (made if missing); ``write`` adds the next one."""

    def __init__(self, uri: str) -> None:
        from pyarrow import fs

        self.uri = uri
        self.filesystem, self.folder = open_uri(uri)
        info = self.filesystem.get_file_info(self.folder)
        if info.type == fs.FileType.File:
            raise OutputError(f"{uri}: is a file; the output is a folder of Parquet parts")
        self.filesystem.create_dir(self.folder, recursive=True)
        names = [i.base_name for i in self.filesystem.get_file_info(fs.FileSelector(self.folder))]
        self.numbers = sorted(int(m.group(1)) for m in map(PART_NAME.fullmatch, names) if m)

    def location(self, number: int) -> str:
        return f"{self.folder.rstrip('/')}/part-{number:05d}.parquet"

    def done(self) -> set[str]:
        """The ``path`` of every row already written."""
        import pyarrow.parquet as pq

        return {
            path
            for number in self.numbers
            for path in pq.read_table(self.location(number), columns=["path"], filesystem=self.filesystem)
            .column("path")
            .to_pylist()
        }

    def check_schema(self, schema: Any) -> None:
        """Refuse to add parts of other columns than the folder's (another kind of model)."""
        import pyarrow.parquet as pq

        if self.numbers:
            written = pq.read_schema(self.location(self.numbers[0]), filesystem=self.filesystem)
            if not written.equals(schema, check_metadata=False):
                raise OutputError(
                    f"{self.uri}: holds parts with columns {', '.join(written.names)}; this model answers "
                    f"{', '.join(schema.names)}: write to another folder"
                )

    def write(self, table: Any) -> str:
        """Add ``table`` as the next part; returns its location."""
        import pyarrow.parquet as pq

        number = self.numbers[-1] + 1 if self.numbers else 0
        final = self.location(number)
        temporary = f"{self.folder.rstrip('/')}/.part-{number:05d}.parquet.tmp"
        pq.write_table(table, temporary, filesystem=self.filesystem)
        self.filesystem.move(temporary, final)
        self.numbers.append(number)
        return final
