"""The one reader and writer of video files (OpenCV's VideoCapture / VideoWriter). Frames are BGR uint8 H x W x 3
arrays, as `read_image` gives them.

Reading: `open_video` checks that a file decodes (a first frame) and returns its frame rate; `read_frames` yields
every N-th frame with its index in the video (0, N, 2N, ...), in order. OpenCV reports a frame it cannot decode as
the end of the video, so a video damaged part-way gives its frames up to the damage.

Writing: `write_video` writes frames with the 'mp4v' codec into a .mp4 file, or, where this OpenCV build cannot
(no FFmpeg writer), Motion-JPEG into a .avi file of the same stem; atomically (a temporary name beside the target,
then `os.replace`), so a killed run never leaves half a video under the final name.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from .files import make_folder
from .images import ReadError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
# (suffix, fourcc) tried in order by `write_video`
VIDEO_CODECS = ((".mp4", "mp4v"), (".avi", "MJPG"))
DEFAULT_FPS = 25.0  # a video whose frame rate OpenCV cannot tell


def open_video(path: str | Path) -> float:
    """The video's frame rate (DEFAULT_FPS when it records none); ReadError naming the file when OpenCV cannot
    open it or decode its first frame."""
    capture = cv2.VideoCapture(str(path))
    try:
        readable = capture.isOpened() and capture.grab()
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        capture.release()
    if not readable:
        raise ReadError(
            f"cannot read video {path} (not a video OpenCV can decode, or no frames): check that it plays, or convert "
            "it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)"
        )
    return fps if np.isfinite(fps) and fps > 0 else DEFAULT_FPS


def read_frames(path: str | Path, every: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """(index, BGR frame) of frames 0, every, 2 * every, ... of the video, in order."""
    capture = cv2.VideoCapture(str(path))
    try:
        index = 0
        while capture.grab():  # grab without decoding the frames that are not taken
            if index % every == 0:
                ok, frame = capture.retrieve()
                if not ok:
                    return
                yield index, frame
            index += 1
    finally:
        capture.release()


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float) -> Path:
    """Write BGR frames (all of the first one's size) as a video at `path` (its suffix is replaced by the codec's:
    .mp4 with mp4v, else .avi with MJPG); returns the path written. OSError when no codec can be opened or there
    are no frames."""
    path = Path(path)
    make_folder(path.parent)
    for stale in path.parent.glob(f".{path.stem}.*.tmp.*"):  # left by a killed run
        stale.unlink(missing_ok=True)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise OSError(f"no frames to write to {path}")
    height, width = first.shape[:2]
    for suffix, codec in VIDEO_CODECS:
        target = path.with_suffix(suffix)
        temporary = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp{suffix}")
        writer = cv2.VideoWriter(str(temporary), cv2.VideoWriter_fourcc(*codec), fps, (width, height))
        if writer.isOpened():
            break
        writer.release()
        temporary.unlink(missing_ok=True)
    else:
        raise OSError(f"this OpenCV build can write none of {', '.join(c for _, c in VIDEO_CODECS)}: no {path}")
    try:
        for frame in itertools.chain([first], frames):
            writer.write(np.ascontiguousarray(frame))
        writer.release()
        os.replace(temporary, target)
    except BaseException:
        writer.release()
        temporary.unlink(missing_ok=True)
        raise
    return target
