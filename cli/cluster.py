"""`vaecodec compress/decompress SRC -o DST --ray [ADDRESS]`: a folder job on a Ray cluster with Ray Data.

This process lists the files (a local folder, or any URI pyarrow's filesystems reach: s3://, gs://, ...),
leaves out those whose output exists (unless --force), and hands the rest to ``vaecodec.ray``'s actors
through ``ray.data.read_binary_files`` (or ``read_parquet``). The coded results stream back here in input
order and are written as files mirroring the source tree (atomically when local), or appended to one
Parquet file in DST. A file that fails is reported with its path; the others go on.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import click

import vaecodec.errors
from vaecodec.errors import UsageError, VaecodecError
from vaecodec.ray import HEADER_COLUMNS, import_ray

from .batch import error_line, exit_code_for, gray_note, without_name
from .files import COMPRESSED_SUFFIX, IMAGE_SUFFIXES, refuse_overwrite, walk, write_atomically

PARQUET_NAME = "part-00000.parquet"
PARQUET_COLUMNS = ("path", *HEADER_COLUMNS, "vae")


@dataclass
class Location:
    """A file or folder: a local path, or a path inside a pyarrow filesystem named by a URI."""

    text: str  # as the user gave it
    filesystem: object = None  # None: local
    path: str = ""

    @classmethod
    def parse(cls, value) -> "Location":
        text = uri_text(value)
        if "://" not in text:
            return cls(text, None, os.path.abspath(text))
        import pyarrow.fs

        try:
            filesystem, path = pyarrow.fs.FileSystem.from_uri(text)
        except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ... for unknown schemes or buckets
            raise UsageError(f"{text}: {error}") from None
        return cls(text, filesystem, path)

    def child(self, relative: str) -> "Location":
        return Location(f"{self.text.rstrip('/')}/{relative}", self.filesystem, f"{self.path.rstrip('/')}/{relative}")

    def exists(self) -> bool:
        if self.filesystem is None:
            return os.path.lexists(self.path)
        import pyarrow.fs

        return self.filesystem.get_file_info(self.path).type != pyarrow.fs.FileType.NotFound

    def write(self, data: bytes, force: bool) -> None:
        """The whole file or nothing: locally through a renamed temporary file; object stores publish a file
        only when its stream closes."""
        if self.filesystem is None:
            write_atomically(Path(self.path), lambda file: file.write(data), force)
            return
        if not force and self.exists():
            raise UsageError(f"{self.text} exists; use --force to overwrite it")
        try:
            self.filesystem.create_dir(str(PurePosixPath(self.path).parent), recursive=True)
            with self.filesystem.open_output_stream(self.path) as stream:
                stream.write(data)
        except OSError as error:
            raise VaecodecError(f"cannot write {self.text}: {error}") from None


def uri_text(value) -> str:
    """The argument as typed: click's Path type has collapsed the "//" of "s3://bucket" into "s3:/bucket"."""
    text = str(value)
    scheme, separator, rest = text.partition(":/")
    if separator and scheme.isidentifier() and len(scheme) > 1 and not rest.startswith("/"):
        return f"{scheme}://{rest}"
    return text


@dataclass
class Item:
    """One file of the job: where it is read from, its path relative to the source, and where it goes."""

    source: Location
    relative: str
    target: Location | None = None
    bytes_in: int = 0


def list_sources(source: Location, suffixes) -> list:
    """Items for the files below ``source`` with one of ``suffixes``, hidden ones skipped, in a stable order
    (for a local folder the order of the one-process job)."""
    if source.filesystem is None:
        root = Path(source.path)
        if not root.exists():
            raise UsageError(f"{source.text}: no such file or directory")
        paths = [root] if root.is_file() else list(walk(root, suffixes))
        items = []
        for path in paths:  # read by absolute path, reported as the user named it
            relative = root.name if path == root else path.relative_to(root).as_posix()
            shown = source.text if path == root else str(Path(source.text) / relative)
            items.append(Item(Location(shown, None, str(path)), relative, bytes_in=path.stat().st_size))
        return items
    import pyarrow.fs

    info = source.filesystem.get_file_info(source.path)
    if info.type == pyarrow.fs.FileType.NotFound:
        raise UsageError(f"{source.text}: no such file or directory")
    if info.type == pyarrow.fs.FileType.File:
        return [Item(source, PurePosixPath(source.path).name, bytes_in=info.size)]
    found = source.filesystem.get_file_info(pyarrow.fs.FileSelector(source.path, recursive=True))
    items = []
    wanted = {suffix.lower() for suffix in suffixes}
    for entry in found:
        relative = entry.path[len(source.path.rstrip("/")):].lstrip("/")
        parts = PurePosixPath(relative).parts
        if (entry.type == pyarrow.fs.FileType.File and not any(part.startswith(".") for part in parts)
                and PurePosixPath(relative).suffix.lower() in wanted):
            items.append(Item(Location(entry.path, source.filesystem, entry.path), relative, bytes_in=entry.size))
    return sorted(items, key=lambda item: item.relative)


def start_ray(address):
    """Connect to the cluster at ``address`` ("" or None: the one RAY_ADDRESS names or a running local one,
    else start one here), quietly: this command prints its own lines."""
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address or None, include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise UsageError(f"cannot connect to Ray at {address or 'the default address'}: {error}") from None
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = True  # results in input order, so the report is stable
    return ray


class Report:
    """A line per file, the summary, and the exit code, as the one-process job prints them. Its clock
    restarts once the cluster is reached (``connected``), as the one-process job's starts with the model
    loaded."""

    def __init__(self, quality: float = None):
        self.quality = quality  # asked of a compress job, for the note of a grayscale image coded lower
        self.started = time.perf_counter()
        self.images = self.bytes_in = self.bytes_out = 0
        self.bpp_sum = 0.0
        self.failed_classes = []

    def succeeded(self, item: Item, target_text: str, width: int, height: int, bytes_out: int,
                  compressed_bytes: int, coded_quality: float = None) -> None:
        bpp = 8 * compressed_bytes / (width * height)
        self.images += 1
        self.bytes_in += item.bytes_in
        self.bytes_out += bytes_out
        self.bpp_sum += bpp
        note = gray_note(self.quality, coded_quality) if coded_quality is not None else ""
        note = f", {note}" if note else ""
        click.echo(f"{item.source.text} -> {target_text}: {width}x{height}, {compressed_bytes} bytes, {bpp:.3f} bpp"
                   f"{note}")

    def failed(self, item: Item, error: VaecodecError | str, error_class: type = VaecodecError) -> None:
        self.failed_classes.append(type(error) if isinstance(error, VaecodecError) else error_class)
        message = without_name(str(error), PurePosixPath(item.source.text).name)
        click.echo(error_line(f"{item.source.text}: {message}"), err=True)

    def connected(self) -> None:
        self.started = time.perf_counter()

    def finish(self, count: int) -> int:
        seconds = time.perf_counter() - self.started
        if count > 1:
            mean_bpp = self.bpp_sum / self.images if self.images else 0.0
            failed = f", {len(self.failed_classes)} failed" if self.failed_classes else ""
            click.echo(f"{self.images} images{failed}: {self.bytes_in} bytes in, {self.bytes_out} bytes out, "
                       f"mean {mean_bpp:.3f} bpp, {self.images / seconds:.2f} images/s, {seconds:.2f} s")
        return exit_code_for(self.failed_classes)


def error_class(name) -> type:
    found = getattr(vaecodec.errors, str(name), None)
    return found if isinstance(found, type) and issubclass(found, VaecodecError) else VaecodecError


def claim_targets(items: list, report: Report, force: bool) -> list:
    """The items whose output may be written; the others are reported now, before any coding."""
    ready = []
    for item in items:
        if not force and item.target.exists():
            report.failed(item, UsageError(f"{item.target.text} exists; use --force to overwrite it"))
        else:
            ready.append(item)
    return ready


def read_files(ray, items: list):
    filesystem = items[0].source.filesystem
    # num_cpus=0: the coding actors hold the CPUs; reads that waited for one would wait for ever.
    return ray.data.read_binary_files([item.source.path for item in items], include_paths=True,
                                      filesystem=filesystem, num_cpus=0)


def compress_on_ray(inputs, output, quality: float, refine_steps: int, force: bool, model: str, address,
                    parquet: bool) -> int:
    """The compress command's --ray form; returns the exit code."""
    import vaecodec.ray

    source, destination = one_source_and_output(inputs, output)
    items = list_sources(source, IMAGE_SUFFIXES)
    if not items:
        raise UsageError(f"no image files ({' '.join(IMAGE_SUFFIXES)}) found in {source.text}")
    report = Report(quality)
    if parquet:
        table_file = destination.child(PARQUET_NAME)
        if table_file.exists() and not force:
            raise UsageError(f"{table_file.text} exists; use --force to overwrite it")
        ready = items
    else:
        for item in items:
            item.target = destination.child(str(PurePosixPath(item.relative).with_suffix(COMPRESSED_SUFFIX)))
        ready = claim_targets(items, report, force)
    if ready:
        ray = start_ray(address)
        report.connected()
        coded = vaecodec.ray.compress_dataset(read_files(ray, ready), quality=quality, model=model,
                                              refine_steps=refine_steps)
        rows = iter_rows(coded, ready)
        if parquet:
            write_table(rows, table_file, report, force)
        else:
            for item, row in rows:
                if row["error"] is not None:
                    report.failed(item, row["error"], error_class(row["error_class"]))
                    continue
                try:
                    item.target.write(row["vae"], force)
                except VaecodecError as error:
                    report.failed(item, error)
                    continue
                report.succeeded(item, item.target.text, row["width"], row["height"], len(row["vae"]), len(row["vae"]),
                                 row["quality"])
    return report.finish(len(items))


def iter_rows(dataset, items: list):
    """(item, row) for each item, the rows of ``dataset`` coming back in input order (preserve_order)."""
    items = iter(items)
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=16):
        for row in batch.to_pylist():
            yield next(items), row


def write_table(rows, table_file: Location, report: Report, force: bool) -> None:
    """Append the successful rows to one Parquet file (path relative to the source, header fields, .vae
    bytes), written under a temporary name and renamed at the end when local."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vaecodec.ray import COMPRESSED_SCHEMA

    schema = pa.schema([COMPRESSED_SCHEMA().field(name) for name in PARQUET_COLUMNS])
    local = table_file.filesystem is None
    path = Path(table_file.path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp") if local else None
    if local:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = pq.ParquetWriter(str(temporary), schema)
    else:
        writer = pq.ParquetWriter(table_file.path, schema, filesystem=table_file.filesystem)
    try:
        for item, row in rows:
            if row["error"] is not None:
                report.failed(item, row["error"], error_class(row["error_class"]))
                continue
            row["path"] = item.relative
            writer.write_table(pa.Table.from_pylist([{name: row[name] for name in PARQUET_COLUMNS}], schema=schema))
            report.succeeded(item, f"{table_file.text}[{item.relative}]", row["width"], row["height"],
                             len(row["vae"]), len(row["vae"]), row["quality"])
        writer.close()
        if local:
            refuse_overwrite(path, force)
            os.replace(temporary, path)
    except BaseException:
        writer.close()
        if local:
            temporary.unlink(missing_ok=True)
        raise


def decompress_on_ray(inputs, output, suffix: str, pillow_format: str, save_options: dict, force: bool, model: str,
                      address, parquet: bool) -> int:
    """The decompress command's --ray form: .vae files (or, with --parquet, the Parquet dataset compress
    --parquet wrote) to image files under DST; returns the exit code."""
    import vaecodec.ray

    source, destination = one_source_and_output(inputs, output)
    report = Report()
    if parquet:
        import pyarrow.parquet

        try:  # the paths alone, read here, name the outputs before anything is decoded
            relative_paths = pyarrow.parquet.read_table(source.path, columns=["path"],
                                                        filesystem=source.filesystem).column("path").to_pylist()
        except (OSError, ValueError, KeyError) as error:
            raise UsageError(f"{source.text}: not a Parquet dataset of compress --parquet ({error})") from None
        ray = start_ray(address)
        report.connected()
        table = ray.data.read_parquet(source.path, filesystem=source.filesystem, num_cpus=0).select_columns(["path", "vae"])
        items = [Item(Location(f"{source.text}[{relative}]"), relative) for relative in relative_paths]
        for item in items:
            item.target = destination.child(str(PurePosixPath(item.relative).with_suffix(suffix)))
        if any(not force and item.target.exists() for item in items):
            raise UsageError("outputs exist in the destination; use --force to overwrite them")
        ready = items
    else:
        items = list_sources(source, [COMPRESSED_SUFFIX])
        if not items:
            raise UsageError(f"no {COMPRESSED_SUFFIX} files found in {source.text}")
        for item in items:
            item.target = destination.child(str(PurePosixPath(item.relative).with_suffix(suffix)))
        ready = claim_targets(items, report, force)
        if ready:
            ray = start_ray(address)
            report.connected()
            table = read_files(ray, ready)
    if ready:
        decoded = vaecodec.ray.decompress_dataset(table, model=model, column="vae" if parquet else "bytes",
                                                  image_format=pillow_format, save_options=save_options)
        for item, row in iter_rows(decoded, ready):
            if row["error"] is not None:
                report.failed(item, row["error"], error_class(row["error_class"]))
                continue
            try:
                item.target.write(row["image"], force)
            except VaecodecError as error:
                report.failed(item, error)
                continue
            item.bytes_in = row["vae_bytes"]
            report.succeeded(item, item.target.text, row["width"], row["height"], len(row["image"]), item.bytes_in)
    return report.finish(len(items))


def refuse_with_ray(address, **options) -> None:
    """UsageError for --parquet without --ray, and for the options the Ray job does not have."""
    if address is None:
        raise UsageError("--parquet needs --ray")
    given = [f"--{name.replace('_', '-')}" for name, value in options.items() if value]
    if given:
        raise UsageError(f"{' and '.join(given)} cannot be combined with --ray")


def one_source_and_output(inputs, output) -> tuple:
    if len(inputs) != 1:
        raise UsageError("--ray takes one source (a folder, a file or a URI such as s3://bucket/photos/)")
    if output is None:
        raise UsageError("--ray needs -o DST (a folder, or a URI such as s3://bucket/out/)")
    return Location.parse(inputs[0]), Location.parse(output)
