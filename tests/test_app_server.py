"""The browser demo's page served by gradio on a loopback port and called through its API (gradio_client):
gradio's file cache stays in the demo's private folder, is pruned and removed at shutdown; values gradio
cannot take become a message and one log line, never a traceback. The tabs have no model here (the
degradation actions need none), so the server starts in seconds."""
from __future__ import annotations

import logging
import os
import socket
import stat

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from rass.app.inputs import Downloads  # noqa: E402
from rass.app.models import AppError, Loaded, ModelChoice  # noqa: E402
from rass.app.session import DemoApp  # noqa: E402
from rass.app.workdir import GRADIO_ENV, WorkDir, remove_oldest  # noqa: E402

KEEP = 4  # cache entries kept by the server's pruning (a request here makes 3: upload, clean, degraded)


def _image(path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24 + seed, 32, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(client, page, work, shared): the page on a free port with its WorkDir; `shared` is where
    GRADIO_TEMP_DIR pointed before (gradio's cache would have gone there)."""
    from rass.app.page import build_page

    tmp = tmp_path_factory.mktemp("app_server")
    shared = tmp / "shared_gradio_cache"
    old_env = os.environ.get(GRADIO_ENV)
    os.environ[GRADIO_ENV] = str(shared)
    work = WorkDir(cache_keep=KEEP, parent=str(tmp))
    work.use_for_gradio()
    choice = ModelChoice("none.yaml", [], "no model in this test")
    app = DemoApp(Loaded(choice, error="no model"), Loaded(choice, error="no model"), Downloads(work.downloads))
    page = build_page(app, [_image(tmp / "example.png", 20)], before=work.prune_gradio_cache)
    page.queue(default_concurrency_limit=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[work.root], ssr_mode=False)
    work.keep_page_files()
    client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False,
                                  analytics_enabled=False)
    try:
        yield client, page, work, shared, tmp
    finally:
        page.close()
        work.close()
        if old_env is None:
            os.environ.pop(GRADIO_ENV, None)
        else:
            os.environ[GRADIO_ENV] = old_env


def _entries(folder: str):
    return sorted(os.listdir(folder))


def _files_below(folder) -> list:
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files]


def test_remove_oldest_keeps_the_newest_entries(tmp_path):
    for i, name in enumerate(["c", "a", "b"]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(b"x")
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
        os.utime(tmp_path / name / "x.png", (1000 + i, 1000 + i))
    removed = remove_oldest(str(tmp_path), 2)  # by name
    assert [os.path.basename(p) for p in removed] == ["a"] and _entries(tmp_path) == ["b", "c"]
    removed = remove_oldest(str(tmp_path), 1, key=lambda p: os.stat(os.path.join(p, "x.png")).st_mtime)
    assert [os.path.basename(p) for p in removed] == ["c"] and _entries(tmp_path) == ["b"]
    assert remove_oldest(str(tmp_path / "absent"), 1) == []


def test_gradio_cache_is_private_and_pruned(served):
    client, page, work, shared, tmp = served
    assert page.GRADIO_CACHE == work.gradio_cache and os.environ[GRADIO_ENV] == work.gradio_cache
    assert stat.S_IMODE(os.stat(work.root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(work.gradio_cache).st_mode) == 0o700
    outputs, counts = [], []
    for i in range(5):
        out = client.predict(gradio_client.handle_file(_image(tmp / f"photo{i}.png", i)), "lqseg_1", i,
                             api_name="/load")
        assert out[4].startswith(f"Loaded photo{i}.png") and f"lqseg_1, seed {i}" in out[4]  # the status
        outputs.append([o["path"] for o in out[0:3]])  # clean, degraded, SAM canvas as cached by gradio
        counts.append(len(_entries(work.gradio_cache)))
    for paths in outputs:
        assert all(os.path.commonpath([p, work.gradio_cache]) == work.gradio_cache for p in paths)
    assert all(os.path.exists(p) for p in outputs[-1])  # the newest request's images are served
    assert not any(os.path.exists(p) for p in outputs[0])  # the first request's were pruned
    assert max(counts) <= KEEP + 4, counts  # without pruning: ~4 more entries per request
    assert not os.path.exists(shared)  # nothing went to the shared cache
    outside = [f for f in _files_below(tmp) if not f.startswith(work.root + os.sep)]
    assert sorted(os.path.basename(f) for f in outside) == ["example.png"] + [f"photo{i}.png" for i in range(5)]
    examples = [f for f in _files_below(work.gradio_cache) if os.path.basename(f) == "example.png"]
    assert len(examples) == 1  # the example's copy in gradio's cache outlives the pruning: it stays clickable
    work.prune_gradio_cache()
    kept = _entries(work.gradio_cache)
    assert len(kept) == KEEP + len(work._page_files) and all(os.path.dirname(p) in [os.path.join(work.gradio_cache, k) for k in kept]
                                     for p in outputs[-1])


def test_invalid_values_sent_to_the_api_give_a_message_and_one_log_line(served, caplog, capfd):
    from gradio_client.exceptions import AppError as ClientAppError

    client, page, work, shared, tmp = served
    good = gradio_client.handle_file(_image(tmp / "ok.png", 9))
    cases = [
        ("/degrade", ("lqseg_1", "abc"), "invalid request to degrade: Seed: 'abc' is not a valid value "
                                         "(expected a `float | None`)"),
        ("/degrade", ("jpeg", 0), "invalid request to degrade: Value: 'jpeg' (type: <class 'str'>) is not in the "
                                  "list of choices"),
        ("/load", (good, "lqseg_1", -5), "invalid request to load: Value -5 is less than minimum value 0."),
        ("/load", ("not-a-file-payload", "lqseg_1", 0), "invalid request to load: 1 validation error for FileData"),
        ("/on_click", ("lasso", True), "invalid request to on_click: Value: 'lasso'"),
        ("/on_click", ("box corner", True), "invalid request to on_click: the event data is missing or malformed"),
    ]
    capfd.readouterr()
    for api, args, message in cases:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            with pytest.raises(ClientAppError) as e:  # the error message the page shows
                client.predict(*args, api_name=api)
        assert str(e.value).startswith(message), (api, str(e.value))
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1 and lines[0].startswith(message) and "\n" not in lines[0], lines
        assert all(r.exc_info is None for r in caplog.records)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err
    # an unreadable upload is the action's own message in the status box, as on the page
    bad = tmp / "broken.png"
    bad.write_text("not an image")
    out = client.predict(gradio_client.handle_file(str(bad)), "lqseg_1", 0, api_name="/load")
    assert out[4].startswith("**Error:** broken.png: not an image file this demo can read")


def test_click_positions_are_checked():
    from rass.app.page import click_position, invalid_input_message

    assert click_position([3, 4.5]) == (3.0, 4.5)
    for bad, match in ((None, r"pixel \[x, y\], got None"), (["a", 1], "pixel"), ([1, 2, 3], "pixel"),
                       ([float("nan"), 1], "finite")):
        with pytest.raises(AppError, match=match):
            click_position(bad)
    long = invalid_input_message("load", ValueError("x" * 1000))
    assert len(long) == len("invalid request to load: ") + 300 and long.endswith("...")


def test_the_private_folder_is_removed_when_the_server_closes(served):
    client, page, work, shared, tmp = served
    root = work.root
    assert _files_below(root)  # downloads-free here, but gradio's cache has files
    page.close()
    work.close()
    assert not os.path.exists(root)
    assert os.environ.get(GRADIO_ENV) == str(shared)  # as it was before the demo
    work.close()  # idempotent


def test_demo_app_removes_its_folder_on_sigterm(tmp_path, monkeypatch, capsys):
    """demo/app.py's main as a user runs it, stopped by SIGTERM (as a service manager does): the private
    folder and gradio's cache in it are gone and the SIGTERM handler is restored."""
    import signal
    import threading

    from tests.conftest import load_script

    demo = load_script("demo/app.py", "demo_app_sigterm")
    seen = {}

    class Work(WorkDir):
        def __init__(self):
            super().__init__(parent=str(tmp_path))
            seen["root"], seen["cache"] = self.root, self.gradio_cache

        def keep_page_files(self):
            super().keep_page_files()  # the page is served: stop it the way a service manager does
            seen["mode"] = stat.S_IMODE(os.stat(self.root).st_mode)
            seen["files"] = _files_below(self.gradio_cache)
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()

    choice = ModelChoice("none.yaml", [], "no model in this test")
    monkeypatch.setattr("rass.app.workdir.WorkDir", Work)
    monkeypatch.setattr("rass.app.models.load_backend", lambda *a, **k: Loaded(choice, error="no model"))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        demo.main(["--port", "0"])
    assert e.value.code == 128 + signal.SIGTERM
    assert seen["mode"] == 0o700 and any(f.endswith("synthetic_scene.png") for f in seen["files"])
    assert not os.path.exists(seen["root"]) and os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == before
    assert os.environ.get(GRADIO_ENV) != seen["cache"]
    assert "RASS demo running at http://127.0.0.1:" in capsys.readouterr().out
