"""tools/serve.py: the HTTP service answered over loopback by a real uvicorn server and a real HTTP client (httpx).

The app's own tests serve it from a thread with a stand-in predictor (a fixed rule on the pixels: the uploads'
checks happen before any model runs); the tool's tests start `tools/serve.py --package` as a child process on a
tiny exported package and compare its label maps with `Predictor(package)`'s.
"""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import uvicorn
from conftest import REPO, TinyPackage, doc_commands, tree_hashes
from PIL import Image

from mask2former.inference.predictor import Predictor
from mask2former.io.images import read_image
from mask2former.serve.app import create_app
from mask2former.serve.launch import bind, check_arguments, is_loopback, main, parse_args

CLASSES = ["background", "Paper", "Metal"]
PALETTE = [[0, 0, 0], [200, 30, 30], [30, 200, 30]]


@dataclass
class _Labels:
    labels: np.ndarray


class RulePredictor:
    """A stand-in for `Predictor`: the class of a pixel is its blue value // 100 (0, 1 or 2)."""

    class_names = CLASSES

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: np.ndarray) -> _Labels:
        self.calls += 1
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        return _Labels((image[:, :, 0] // 100).astype(np.uint8))


@contextmanager
def serving(app) -> Iterator[str]:
    """`app` served by uvicorn from a thread on a free loopback port; yields its base URL."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


@pytest.fixture
def predictor() -> RulePredictor:
    return RulePredictor()


@pytest.fixture
def url(predictor: RulePredictor) -> Iterator[str]:
    app = create_app(predictor, palette=PALETTE, max_upload_bytes=2 * 2**20, max_pixels=1_000_000)
    with serving(app) as base:
        yield base


def photo(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A BGR image whose blue channel spans all three classes."""
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[:, :, 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    return image


def encoded(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def refused(response: httpx.Response, status: int, pattern: str) -> None:
    """A refusal: the status, and a one-line detail matching `pattern`."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    assert pattern in detail, detail


# ---- the app --------------------------------------------------------------------------------------------------------


def test_predict_returns_the_label_map_as_an_indexed_png(url: str, predictor: RulePredictor, tmp_path: Path) -> None:
    image = photo()
    (tmp_path / "photo.jpg").write_bytes(encoded(image, ".jpg"))
    expected = predictor(read_image(tmp_path / "photo.jpg")).labels  # the project's reader, as from a file
    with httpx.Client(base_url=url) as client:
        response = client.post("/predict", files={"file": ("photo.jpg", (tmp_path / "photo.jpg").read_bytes())})
        raw = client.post("/predict", content=(tmp_path / "photo.jpg").read_bytes())  # the image as the body
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    png = Image.open(io.BytesIO(response.content))
    assert png.mode == "P" and png.size == (64, 48)
    assert png.getpalette()[:9] == [c for colour in PALETTE for c in colour]
    np.testing.assert_array_equal(np.array(png), expected)
    assert set(np.unique(expected)) == {0, 1, 2}
    assert raw.status_code == 200 and raw.content == response.content


def test_predict_as_json_gives_each_class_share_of_the_pixels(url: str) -> None:
    image = photo(20, 30)
    labels = image[:, :, 0] // 100
    with httpx.Client(base_url=url) as client:
        response = client.post("/predict", params={"format": "json"}, files={"file": ("a.png", encoded(image))})
    assert response.status_code == 200
    answer = response.json()
    assert (answer["height"], answer["width"]) == (20, 30)
    assert list(answer["fractions"]) == CLASSES
    for index, name in enumerate(CLASSES):
        assert answer["fractions"][name] == pytest.approx(float((labels == index).mean()), abs=1e-6)


def test_health_names_the_classes(url: str) -> None:
    response = httpx.get(f"{url}/health")
    assert response.status_code == 200 and response.json() == {"status": "ok", "classes": CLASSES}


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height 8-bit RGB pixels, with one tiny compressed row: a decompression
    bomb's header, a few dozen bytes long."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + pixels + chunk(b"IEND", b"")


FIELDS_ONLY = b'--x\r\nContent-Disposition: form-data; name="note"\r\n\r\nno file\r\n--x--\r\n'


def test_bad_uploads_are_refused_with_a_4xx_and_one_line(url: str, predictor: RulePredictor) -> None:
    jpeg = encoded(photo(64, 64), ".jpg")
    form = {"content-type": "multipart/form-data; boundary=x"}
    cases = [  # (what is sent, status, a part of the message)
        ({"files": {"file": ("big.bin", b"\0" * (2 * 2**20 + 1))}}, 413, "over the limit of 2.0 MiB"),
        ({"content": b"\0" * (3 * 2**20)}, 413, "over the limit of 2.0 MiB"),
        ({"files": {"file": ("notes.txt", b"not an image at all\n" * 50)}}, 415, "not an image"),
        ({"files": {"file": ("bomb.png", png_declaring(50_000, 50_000))}}, 413, "over the limit of 1000000 pixels"),
        ({"files": {"file": ("wide.png", png_declaring(2000, 1000))}}, 413, "2000x1000 pixels, over the limit of 1000"),
        ({"files": {"file": ("cut.jpg", jpeg[: len(jpeg) // 2])}}, 400, "broken or truncated"),
        ({"files": {"file": ("empty.png", b"")}}, 400, "empty"),
        ({"content": FIELDS_ONLY, "headers": form}, 400, "the multipart form holds no file"),
        ({"content": b"--x\r\nbroken", "headers": form}, 400, "the multipart form"),
    ]
    with httpx.Client(base_url=url) as client:
        for request, status, message in cases:
            refused(client.post("/predict", **request), status, message)
        refused(client.post("/predict?format=xml", content=jpeg), 400, "format='xml' is not one of png, json")
    assert predictor.calls == 0


# Files opened under a watched folder (tmp_path/tmp during the test below), seen by an audit hook: the "open" event
# is raised for every open(), os.open() and tempfile call, an unlinked O_TMPFILE one included (it names the folder).
_WATCHED: list[str] = []
_OPENED: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _WATCHED and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if any(path.startswith(folder) for folder in _WATCHED):
            _OPENED.append(path)


sys.addaudithook(_audit)


def test_uploads_are_never_written_to_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3 MiB upload (over the 1 MiB at which a spooled upload would go to a temporary file) opens no file in the
    temporary folder (unlinked temporary files included) and leaves nothing there."""
    import tempfile

    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    data = encoded(np.random.default_rng(1).integers(0, 256, (1024, 1024, 3), dtype=np.uint8))
    assert len(data) > 3 * 2**20
    predictor = RulePredictor()
    with serving(create_app(predictor, max_upload_bytes=8 * 2**20)) as base:
        _WATCHED.append(str(spool))
        try:
            response = httpx.post(f"{base}/predict", files={"file": ("big.png", data)}, timeout=60)
        finally:
            _WATCHED.clear()
    assert response.status_code == 200 and predictor.calls == 1
    assert _OPENED == [] and not any(spool.iterdir())


# ---- the tool ------------------------------------------------------------------------------------------------------


def test_loopback_addresses() -> None:
    assert all(is_loopback(host) for host in ("127.0.0.1", "127.8.0.1", "::1", "localhost"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "192.168.1.20", "sorting-pc.local"))


@pytest.fixture
def package_files(tmp_path: Path) -> Path:
    """A folder with a package's files by name (what the tool checks before it binds a port or loads a model)."""
    folder = tmp_path / "package"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"")
    (folder / "classes.json").write_text(json.dumps({"class_names": CLASSES, "palette": PALETTE}))
    return folder


def test_a_host_other_machines_reach_needs_allow_remote(package_files: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--package", str(package_files), "--host", "0.0.0.0"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == (
        "serve.py: --host 0.0.0.0 is not a loopback address and the service has no authentication: add "
        "--allow-remote to let other machines use it, or leave --host out (127.0.0.1)\n"
    )
    check_arguments(parse_args(["--package", str(package_files), "--host", "0.0.0.0", "--allow-remote"]))
    assert capsys.readouterr().err == (
        "serve.py: warning: serving on 0.0.0.0: any machine that reaches this port can use the model\n"
    )


def test_a_folder_that_is_not_a_package_and_a_port_in_use_are_one_line(
    package_files: Path, tmp_path: Path, capsys
) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    taken = bind("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        for argv, message in [
            (
                [str(tmp_path)],
                f"{tmp_path} is not a model package (no classes.json): its model.onnx is an export made with "
                "--out; write one with tools/export.py --config-file CONFIG --weights CHECKPOINT --package "
                f"NEW_FOLDER (a new folder) (tools/predict.py --weights {tmp_path / 'model.onnx'} runs the file "
                "as it is)",
            ),
            (
                [str(tmp_path / "nope")],
                f"model package {tmp_path / 'nope'} does not exist: give the folder written by "
                "tools/export.py --package",
            ),
            (
                [str(package_files), "--port", str(port)],
                f"cannot listen on 127.0.0.1:{port} (Address already in use): give another --port or --host",
            ),
            ([str(package_files), "--max-upload-mb", "0"], "--max-upload-mb 0.0 must be above 0"),
        ]:
            with pytest.raises(SystemExit) as stopped:
                main(["--package", *argv])
            assert stopped.value.code == 2
            assert capsys.readouterr().err == f"serve.py: {message}\n"
    finally:
        taken.close()


def start_server(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """tools/serve.py started as a child process; returns it and the port its first line names."""
    server = subprocess.Popen(
        [sys.executable, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = server.stdout.readline()
    if " on http://127.0.0.1:" not in line:
        server.kill()
        raise AssertionError(f"the server did not start: {line}{server.stderr.read()[-3000:]}")
    return server, int(line.split("http://127.0.0.1:")[1].split(" ")[0])


def stop(server: subprocess.Popen) -> int:
    """Ctrl-C, as a user stops it; its exit status."""
    server.send_signal(signal.SIGINT)
    try:
        return server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_photo_of_another_shape_on_a_fixed_size_package_is_a_422(tiny_package: TinyPackage) -> None:
    """The tiny package takes only 64 x 64 views: a wide photo (a 85 x 64 view) is a 422 with one line naming the
    package's view size and --dynamic-size, never a 500; a square photo is still predicted."""
    app = create_app(Predictor(tiny_package.folder))
    with serving(app) as base:
        wide = httpx.post(f"{base}/predict?format=json", files={"file": ("wide.png", encoded(photo(48, 64)))})
        refused(wide, 422, "makes a 85x64 view")
        assert "takes only 64x64 views" in wide.json()["detail"] and "--dynamic-size" in wide.json()["detail"]
        square = httpx.post(f"{base}/predict?format=json", files={"file": ("square.png", encoded(photo(64, 64)))})
        assert square.status_code == 200 and square.json()["height"] == 64, square.text


def test_the_documented_service_answers_like_the_predictor(tiny_package: TinyPackage, tmp_path: Path) -> None:
    """docs/deployment.md's commands as written (the server on a free port instead of 8000, which a test cannot
    count on), in a folder holding the package and a square photo where the docs name them: /predict gives
    Predictor(package)'s label map, as a PNG and as class fractions; /health its classes; the requests add
    nothing to the temporary folder."""
    serve, *clients = doc_commands("A local HTTP service")
    assert serve[:2] == ["python", "tools/serve.py"] and len(clients) == 4
    package = tmp_path / serve[serve.index("--package") + 1]
    package.parent.mkdir(parents=True)
    package.symlink_to(tiny_package.folder)
    image_path = tmp_path / "datasets" / "sample" / "batch_03" / "0000.jpg"
    image_path.parent.mkdir(parents=True)
    cv2.imwrite(str(image_path), np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (tmp_path / "tools").symlink_to(REPO / "tools")
    spool = tmp_path / "spool"
    spool.mkdir()
    before = tree_hashes(tiny_package.folder, image_path.parent)
    expected = Predictor(tiny_package.folder)(image_path)

    server, port = start_server([*serve[1:], "--port", "0"], tmp_path, {**os.environ, "TMPDIR": str(spool)})
    at_start = tree_hashes(spool)  # onnxruntime leaves a 51-byte .ses file there when it is imported
    try:
        outputs = []
        for argv in clients:
            if argv[0] == "curl" and shutil.which("curl") is None:
                pytest.skip("curl is not installed here: the documented curl commands cannot run")
            argv = [arg.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for arg in argv]
            argv = [sys.executable, *argv[1:]] if argv[0] == "python" else argv
            done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            outputs.append(done.stdout)
    finally:
        status = stop(server)
    assert status == 0, server.stderr.read()[-3000:]

    labels = Image.open(tmp_path / "labels.png")
    assert labels.mode == "P"
    np.testing.assert_array_equal(np.array(labels), expected.labels)
    counts = np.bincount(expected.labels.ravel(), minlength=len(expected.class_names)) / expected.labels.size
    fractions = {
        name: pytest.approx(float(share), abs=1e-6) for name, share in zip(expected.class_names, counts, strict=True)
    }
    assert json.loads(outputs[1]) == {"height": 64, "width": 64, "fractions": fractions}
    assert json.loads(outputs[2]) == {"status": "ok", "classes": expected.class_names}
    assert ast.literal_eval(outputs[3]) == json.loads(outputs[1])  # the image as the body, printed by Python
    assert tree_hashes(spool) == at_start
    assert tree_hashes(tiny_package.folder, image_path.parent) == before
