"""The standard streams and files of `s2s translate`: opening the input (stdin, a file, a .gz
file) and the output, refusing an output that is the input, and telling a failed write (a
DataError naming the output; a broken pipe ends quietly) from a failed read. Torch-free."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

from s2s.errors import DataError


def open_input(path: str):
    """The input as bytes: stdin, a file, or a gzipped file (.gz, as training reads it)."""
    try:
        if path == "-":
            if sys.stdin is None:
                raise DataError("standard input is closed: give the text with -i FILE")
            return sys.stdin.buffer
        if path.endswith(".gz"):
            import gzip

            return gzip.open(path, "rb")
        return open(path, "rb")
    except OSError as exc:
        raise DataError(f"--input {path}: cannot open ({exc.strerror})") from exc


def not_the_same(input_path: str, output_path: str, *others: str) -> None:
    """A DataError before anything is opened when --output would overwrite --input (or one
    of `others`: the model files, a scored target file)."""
    if output_path == "-" or not Path(output_path).exists():
        return
    for i, path in enumerate((input_path, *others)):
        if path == "-":
            continue
        try:
            same = Path(path).samefile(output_path)
        except OSError:
            continue  # an unreadable input gets its own error
        if same:
            what = "the input file" if i == 0 else f"{path}, which this command reads"
            raise DataError(f"--output {output_path} is {what}: writing it would destroy it "
                            f"before it is read; write to another file")


@contextmanager
def writing(path: str):
    """The output `path` ('-': stdout) as a Sink; a failed write or close is reported as
    writing `path` (a broken pipe ends quietly); a file is closed on the way out."""
    sink = open_output(path)
    out = Sink(sink)
    try:
        yield out
        out.flush()
    except WriteFailed as failed:  # errors reading the input pass through as they are
        write_error(path, failed.__cause__)
    finally:
        if sink is not sys.stdout:
            try:
                sink.close()
            except OSError as exc:  # the last buffered lines could not be written
                write_error(path, exc)


class Sink:
    """The output stream; a failed write raises WriteFailed, so that it is reported as
    writing OUTPUT, not as reading the input."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        try:
            self.stream.write(text)
        except OSError as exc:
            raise WriteFailed(exc) from exc

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            raise WriteFailed(exc) from exc


class WriteFailed(Exception):
    pass


def write_error(path: str, exc: OSError) -> None:
    """A broken pipe (the reader went away, as with `| head`) ends quietly with exit 141, as
    Unix tools do; any other failure is a DataError naming the output."""
    if isinstance(exc, BrokenPipeError):
        try:  # stdout cannot be flushed any more: silence Python's message at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, AttributeError, ValueError):
            pass
        sys.exit(141)
    raise DataError(f"writing {'standard output' if path == '-' else path} failed "
                    f"({exc.strerror or exc})") from exc


def open_output(path: str):
    if path == "-":
        if sys.stdout is None:
            raise DataError("standard output is closed: write to a file with -o FILE")
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8", newline="\n")
    except OSError as exc:
        raise DataError(f"--output {path}: cannot open ({exc.strerror})") from exc
