"""Output files of the command-line demos, planned and checked before any model runs.

`image_outputs` maps input images to output file names (a folder, or one file name for one input)
and `check_writable` makes sure a folder can receive them, so that an unwritable folder, an output
path below a file or an unsupported extension is reported before the (slow) model is built.
"""
from __future__ import annotations

import os
import tempfile
from typing import Dict, Optional, Sequence, Tuple

from rass.utils.errors import UserError
from rass.utils.inputs import IMAGE_EXTS

__all__ = ["WRITABLE_IMAGE_EXTS", "OutputError", "image_outputs", "check_writable", "make_output_folder",
           "nearest_existing"]

# Image file types `rass.utils.io.save_image_atomic` writes (an --output file name must end with one).
WRITABLE_IMAGE_EXTS = (".png", ".jpg", ".jpeg")


class OutputError(UserError):
    """A problem with the --output argument that stops the run (exit code 2)."""


def image_outputs(paths: Sequence[str], output: str, extra: Optional[str] = "_labels",
                  what: str = "overlays") -> Dict[str, Tuple[str, Optional[str]]]:
    """Input path -> (main output path, extra output path or None).

    `output` is a folder unless it has an image extension (then there must be a single input).
    The main file is ``<folder>/<stem>.png``; the extra one ``<stem><extra>.png`` (None: no extra
    file). Repeated stems get a `-2`, `-3`... suffix.

    Args:
        paths: input images.
        output: the --output value.
        extra: suffix of the second file of each image (e.g. "_labels", "_mask"), or None.
        what: name of the main files, for messages.
    """
    ext = os.path.splitext(output)[1].lower()
    if ext in IMAGE_EXTS and not os.path.isdir(output):
        if ext not in WRITABLE_IMAGE_EXTS:
            raise OutputError(f"--output {output}: {what} are written as {' or '.join(WRITABLE_IMAGE_EXTS)}, not {ext}")
        if len(paths) != 1:
            raise OutputError(f"--output {output} is a file name but there are {len(paths)} input images; give a folder")
        second = os.path.splitext(output)[0] + extra + ".png" if extra else None
        return {paths[0]: (output, second)}
    if os.path.exists(output) and not os.path.isdir(output):
        raise OutputError(f"--output {output} is an existing file, not a folder; give a folder or a "
                          f"{'/'.join(WRITABLE_IMAGE_EXTS)} file name")
    outs: Dict[str, Tuple[str, Optional[str]]] = {}
    used = set()
    for path in paths:
        stem = base = os.path.splitext(os.path.basename(path))[0]
        k = 1
        while stem in used:
            k += 1
            stem = f"{base}-{k}"
        used.update({stem, stem + (extra or "")})
        second = os.path.join(output, stem + extra + ".png") if extra else None
        outs[path] = (os.path.join(output, stem + ".png"), second)
    return outs


def check_writable(target: str, folder: str) -> None:
    """Raise `OutputError` unless files can be created in `folder` (created later if missing): its
    first existing ancestor must be a folder in which a file can be made (tried, then removed).

    Args:
        target: the --output value, for the message.
        folder: the folder the outputs go to.
    """
    probe = nearest_existing(folder or ".")
    if not os.path.isdir(probe):
        raise OutputError(f"--output {target}: {probe} is a file, so no folder can be made below it")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise OutputError(f"--output {target}: cannot write in {probe} ({e.strerror or e})") from None


def nearest_existing(path: str) -> str:
    """The absolute path of `path` itself or of its nearest existing parent folder.

    Args:
        path: a file or folder that may not exist yet.
    """
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return probe


def make_output_folder(folder: str, what: str) -> str:
    """Create the output folder `folder` (and its parents) if missing.

    Args:
        folder: the folder.
        what: the argument or config key that gave it (``--output``, ``OUTPUT_DIR``), for the message.

    Returns:
        `folder`.

    Raises:
        OutputError: it cannot be created (a file is in the way, no permission, ...), naming `what`.
    """
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        probe = nearest_existing(folder)
        if os.path.abspath(folder) == probe:
            reason = "it is an existing file, not a folder"
        elif not os.path.isdir(probe):
            reason = f"{probe} is a file, so no folder can be made below it"
        else:
            reason = f"cannot create it in {probe} ({e.strerror or e})"
        raise OutputError(f"{what} {folder}: {reason}", hint=f"give {what} a folder you can write to") from None
    return folder
