"""Command-line plumbing shared by every script: errors and exit status,
argument parsers that show their defaults, output-path checks and atomic
writes.  Imports nothing heavy (no torch), so a script's ``--help`` and its
input checks stay fast.

Exit-status rule (every script):
  0  success
  1  failure at run time (a decode mismatch, a codec or a training run that
     failed, a checksum that does not match after decoding)
  2  usage error or bad input (argparse errors, missing or malformed files,
     a model that does not fit the data, an output path that cannot be used)
130 interrupted (Ctrl-C); outputs are only ever written atomically, so an
     interrupted run leaves nothing half-written.
Errors are one line on stderr, ``PROG: error: MESSAGE``, never a traceback.
"""
import argparse
import contextlib
import copy
import os
import sys
import tempfile

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class BadInput(Exception):
    """Bad user input, missing or malformed file: one line, exit status 2."""
    status = EXIT_BAD_INPUT


class RunFailure(Exception):
    """The work itself failed (not the input): one line, exit status 1."""
    status = EXIT_FAILURE


def one_line(exc_or_text, limit=400):
    """The first line of an exception's message (torch's errors span many
    lines and carry ANSI colour codes), trimmed to ``limit`` characters."""
    text = str(exc_or_text).replace("\x1b[1m", "").replace("\x1b[0m", "")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    first = lines[0] if lines else type(exc_or_text).__name__
    return first if len(first) <= limit else first[:limit - 3] + "..."


def run_main(prog, body):
    """Run ``body()`` (returns an exit status or None) under the exit-status
    rule above: BadInput / RunFailure (and their subclasses) become one line
    on stderr and their status; Ctrl-C becomes status 130."""
    try:
        status = body()
    except (BadInput, RunFailure) as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing half-written is left behind", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if status is None else int(status)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows every default that is a value (not None or an
    unset switch) and keeps the description's layout."""

    def _format_action(self, action):
        if not action.help and action.option_strings and action.default not in (
                None, False, argparse.SUPPRESS):
            action = copy.copy(action)
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def parser(prog, description, **kw):
    """An ArgumentParser with the project's help formatter (usage errors
    exit with status 2, argparse's own rule)."""
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=HelpFormatter, **kw)


def add_device_argument(p, default="auto", note=""):
    """``--device auto|cpu|cuda[:N]`` and the paper's ``--gpu N`` (an alias of
    ``--device cuda:N``); resolve with utils.device.device_from_args(args)."""
    p.add_argument("--device", default=default,
                   help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N" + note)
    p.add_argument("--gpu", type=int, default=None, metavar="N",
                   help="the paper's flag: same as --device cuda:N")


def add_progress_argument(p):
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


# ------------------------------------------------------------------ files

def check_output_path(path, force=False, inputs=()):
    """BadInput (before any work) if ``path`` cannot be written: a folder,
    an existing file without ``force``, one of the ``inputs`` (also through
    links), or a missing / read-only parent folder."""
    if os.path.isdir(path):
        raise BadInput(f"output {path} is a directory")
    for source in inputs:
        if os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
            raise BadInput(f"output {path} is the input file {source}; choose another output")
    if os.path.exists(path) and not force:
        raise BadInput(f"output {path} exists; pass --force to overwrite")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise BadInput(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise BadInput(f"cannot write {path}: directory {parent} is not writable")


def default_file_mode():
    """0666 less the process umask: what open() gives a new file, and what
    atomic outputs get instead of mkstemp's private 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_output(path, mode="wb", make_dirs=True):
    """Open a temporary file beside ``path`` for writing; when the block
    ends without an exception it is flushed, synced, given the usual
    permissions (0666 less the umask, like any other tool's output) and
    renamed onto ``path``; otherwise it is removed and ``path`` untouched.
    Works for torch.save / np.save / json.dump (pass the yielded file)."""
    parent = os.path.dirname(os.path.abspath(path))
    if make_dirs:
        os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)[:40]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path, data):
    """Write bytes or text to ``path`` atomically (see atomic_output);
    an OSError becomes BadInput naming the path."""
    try:
        with atomic_output(path, "w" if isinstance(data, str) else "wb") as f:
            f.write(data)
    except OSError as exc:
        raise BadInput(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def read_bytes(path, what="file"):
    """The bytes of ``path``, or BadInput saying why not."""
    if not os.path.exists(path):
        raise BadInput(f"no such file: {path}")
    if os.path.isdir(path):
        raise BadInput(f"{path} is a directory, not a {what}")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
