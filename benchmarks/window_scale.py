"""The window at scale: start-up on a generated 100k-photo folder, and in-app against CLI indexing.

    .venv/bin/python benchmarks/window_scale.py startup [--photos 100000] [--small 1000] [--json]
    .venv/bin/python benchmarks/window_scale.py indexing [--per-sequence 6] [--repeats 2] [--json]

Folders are made of hard links to the dev photos (../shared/data/dev/images) under a temporary
folder (`--tmp`, default the system's), 1000 photos per sub-folder; nothing is copied.

`startup` runs the real window (Qt's offscreen platform unless QT_QPA_PLATFORM says otherwise)
in a fresh process per folder and reports: seconds from the process start, and from
`open_folder`, until the canvas has painted the first photo; the longest stall of the UI thread
(a 10 ms timer's largest gap) from `open_folder` until indexing has planned its work; and RSS
with no folder open, at the first photo, and once indexing has planned its work (the file list,
the project's scan and the indexing plan all held, no photo extracted yet), and once the project
is open (the list and the labels shown). The same is measured on a `--small` folder;
(RSS_big - RSS_small) / (photos_big - photos_small) at each moment is the memory each photo costs
before indexing, with the engine (torch, the model) cancelled out.

`indexing` indexes the same ~60-photo folder (`--per-sequence` frames of each dev sequence) from
scratch with `dasr-annotator index` and in the window, alternately, each in a fresh process, and
reports photos/s of each (photos extracted over the seconds `Project.update_index` ran: decode,
extraction, shards, maps and the faiss index; not the start-up or model load, which the two
share) and their ratio (window / CLI), best of `--repeats`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROCESS_START = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
DEV_IMAGES = REPO.parent / "shared" / "data" / "dev" / "images"
PER_FOLDER = 1000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def dev_photos() -> list[Path]:
    return sorted(p for p in DEV_IMAGES.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def make_folder(target: Path, count: int) -> Path:
    """`count` hard links to the dev photos (cycled) in sub-folders of PER_FOLDER; reused when
    a previous run made the same."""
    marker = target / ".count"
    if marker.exists() and marker.read_text() == str(count):
        return target
    shutil.rmtree(target, ignore_errors=True)
    sources = dev_photos()
    for i in range(count):
        folder = target / f"d{i // PER_FOLDER:04d}"
        if i % PER_FOLDER == 0:
            folder.mkdir(parents=True)
        src = sources[i % len(sources)]
        os.link(src, folder / f"{i:06d}_{src.parent.name}_{src.name}")
    marker.write_text(str(count))
    return target


def make_sample(target: Path, per_sequence: int) -> Path:
    """`per_sequence` frames of each dev sequence, evenly spaced (as benchmarks/index_speed.py)."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for sequence in sorted(p for p in DEV_IMAGES.iterdir() if p.is_dir()):
        frames = sorted(sequence.iterdir())
        step = max(1, len(frames) // per_sequence)
        for frame in frames[step // 2::step][:per_sequence]:
            os.link(frame, target / f"{sequence.name}_{frame.name}")
    return target


def isolated_env(tmp: Path) -> dict:
    """No run reads or writes the user's settings or cache."""
    env = dict(os.environ)
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    env.update(XDG_CONFIG_HOME=str(tmp / "config"), XDG_CACHE_HOME=str(tmp / "cache"),
               DASR_ANNOTATOR_CACHE=str(tmp / "cache" / "dasr-annotator"))
    return env


def child(args: list[str], tmp: Path) -> dict:
    """Run this script's child mode in a fresh process; its last stdout line is its JSON."""
    out = subprocess.run([sys.executable, __file__, *args], env=isolated_env(tmp), capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed_update_index(record: dict, project_class=None):
    """Wrap Project.update_index to record how long it ran and how many photos it extracted."""
    if project_class is None:
        from dasr_annotator.engine.project.project import Project as project_class

    original = project_class.update_index
    if hasattr(original, "timed"):
        return

    def update_index(self, *a, **kw):
        start = time.perf_counter()
        report = original(self, *a, **kw)
        record.setdefault("runs", []).append({"seconds": time.perf_counter() - start, "indexed": report.indexed})
        return report

    update_index.timed = True
    project_class.update_index = update_index


# ---- child: the window ------------------------------------------------------------------------
def window_child(folder: Path, until: str) -> dict:
    """Open the window on `folder`; `until` = "planned" (indexing has its plan; then cancel) or
    "indexed" (indexing finished)."""
    from PySide6.QtCore import QEvent, QObject, QTimer

    from dasr_annotator.app.gui.application import create_app, open_window
    from dasr_annotator.app.gui.settings import Preferences

    record: dict = {}
    app = create_app()
    window = open_window(None, prefs=Preferences(device="cpu"))
    for _ in range(20):
        app.processEvents()
    out = {"platform": app.platformName(), "rss_mb_empty": rss_mb()}
    marks: dict[str, float] = {}
    stall = {"last": None, "max": 0.0}

    def tick():
        now = time.perf_counter()
        if stall["last"] is not None and "planned" not in marks:
            stall["max"] = max(stall["max"], now - stall["last"])
        stall["last"] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)

    class FirstPaint(QObject):
        def eventFilter(self, obj, event):  # noqa: N802 - Qt's name
            if (event.type() == QEvent.Paint and "painted" not in marks and window.canvas_image is not None
                    and window.stack.currentWidget() is window.canvas):
                marks["painted"] = time.perf_counter()
                out["rss_mb_first_photo"] = rss_mb()
                out["rows_at_first_photo"] = window.file_model.rowCount()
            return False

    thumbnails = []
    window.file_model.thumbnailWanted.connect(thumbnails.append)
    painted = FirstPaint()
    window.canvas.viewport().installEventFilter(painted)

    def progressed(done, total, _eta):
        if total and "planned" not in marks:
            marks["planned"] = time.perf_counter()
            out["rss_mb_planned"] = rss_mb()
            out["indexing_total"] = total
            if until == "planned":
                window.controller.cancel_indexing()

    def finished(*_):
        marks["stopped"] = time.perf_counter()

    def opened(project, _files):  # after the window took the project's list in (connected after it)
        marks["opened"] = time.perf_counter()
        out["rss_mb_opened"] = rss_mb()
        # Wrapped only now: importing the engine (torch) before the window would distort start-up;
        # indexing starts right after this signal, on the engine thread.
        timed_update_index(record, type(project))

    window.controller.projectOpened.connect(opened)
    window.controller.indexingProgress.connect(progressed)
    window.controller.indexingFinished.connect(finished)
    window.controller.indexingStopped.connect(finished)
    window.controller.failed.connect(lambda what, message: out.setdefault("failed", f"{what}: {message}"))
    timer.start()
    marks["open"] = time.perf_counter()
    window.open_folder(folder)
    deadline = time.monotonic() + 1800
    while "stopped" not in marks and "failed" not in out and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.002)
    timer.stop()
    out.update(
        photos=window.file_model.rowCount(),
        s_process_to_first_photo=marks.get("painted", float("nan")) - PROCESS_START,
        s_open_to_first_photo=marks.get("painted", float("nan")) - marks["open"],
        s_open_to_opened=marks.get("opened", float("nan")) - marks["open"],
        s_open_to_planned=marks.get("planned", float("nan")) - marks["open"],
        max_ui_stall_ms=stall["max"] * 1000,
        thumbnails_asked=len(thumbnails),
        rss_mb_end=rss_mb(),
        update_index=record.get("runs", []),
    )
    window.close()
    return out


def cli_child(folder: Path) -> dict:
    from dasr_annotator.app.main import main

    record: dict = {}
    timed_update_index(record)
    start = time.perf_counter()
    code = main(["index", str(folder)])
    return {"exit": code, "wall_s": time.perf_counter() - start, "update_index": record.get("runs", [])}


# ---- the two measurements --------------------------------------------------------------------
def startup(tmp: Path, photos: int, small: int) -> dict:
    result = {}
    for count in (small, photos):
        folder = make_folder(tmp / f"photos-{count}", count)
        shutil.rmtree(folder / ".dasr", ignore_errors=True)
        result[count] = child(["--child-window", str(folder), "--until", "planned"], tmp)
    big, little = result[photos], result[small]
    per_photo = {f"bytes_per_photo_{when}": (big[f"rss_mb_{when}"] - little[f"rss_mb_{when}"]) * 2**20 / (photos - small)
                 for when in ("opened", "planned")}
    return {"photos": photos, "small": small, "window": big, "window_small": little, **per_photo}


def rate(runs: list[dict]) -> float:
    run = max(runs, key=lambda r: r["indexed"])  # the window may pause and resume; never here
    return sum(r["indexed"] for r in runs) / sum(r["seconds"] for r in runs) if run["indexed"] else float("nan")


def indexing(tmp: Path, per_sequence: int, repeats: int) -> dict:
    folder = make_sample(tmp / "sample", per_sequence)
    photos = len([p for p in folder.iterdir() if p.is_file()])
    cli, app = [], []
    for _ in range(repeats):
        shutil.rmtree(folder / ".dasr", ignore_errors=True)
        cli.append(child(["--child-cli", str(folder)], tmp))
        shutil.rmtree(folder / ".dasr", ignore_errors=True)
        app.append(child(["--child-window", str(folder), "--until", "indexed"], tmp))
    cli_rates = [rate(r["update_index"]) for r in cli]
    app_rates = [rate(r["update_index"]) for r in app]
    return {"photos": photos, "cli_photos_per_s": max(cli_rates), "window_photos_per_s": max(app_rates),
            "ratio": max(app_rates) / max(cli_rates), "cli_runs": cli_rates, "window_runs": app_rates,
            "cli_wall_s": [r["wall_s"] for r in cli], "platform": app[0]["platform"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", nargs="?", choices=("startup", "indexing", "both"), default="both")
    ap.add_argument("--photos", type=int, default=100_000, help="photos in the large folder (startup)")
    ap.add_argument("--small", type=int, default=1000, help="photos in the small folder the large one is set against")
    ap.add_argument("--per-sequence", type=int, default=6, help="frames of each dev sequence (indexing: 10 sequences)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tmp", type=Path, help="where the folders are made (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated folders")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child-window", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-cli", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--until", default="planned", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_window:
        print(json.dumps(window_child(args.child_window, args.until)))
        return 0
    if args.child_cli:
        print(json.dumps(cli_child(args.child_cli)))
        return 0
    tmp = args.tmp or Path(tempfile.mkdtemp(prefix="window-scale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    out: dict = {"cores": os.cpu_count()}
    try:
        if args.mode in ("startup", "both"):
            out["startup"] = startup(tmp, args.photos, args.small)
        if args.mode in ("indexing", "both"):
            out["indexing"] = indexing(tmp, args.per_sequence, args.repeats)
    finally:
        if not args.keep and args.tmp is None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    if "startup" in out:
        s = out["startup"]
        w = s["window"]
        print(f"start-up, {s['photos']} photos ({w['platform']}): first photo painted {w['s_process_to_first_photo']:.2f} s "
              f"after the process started ({w['s_open_to_first_photo']:.2f} s after open_folder; "
              f"{w['rows_at_first_photo']} rows listed then); project open after {w['s_open_to_opened']:.2f} s, "
              f"indexing planned after {w['s_open_to_planned']:.2f} s; longest UI stall {w['max_ui_stall_ms']:.0f} ms "
              f"({s['window_small']['max_ui_stall_ms']:.0f} ms with {s['small']} photos); "
              f"{w['thumbnails_asked']} thumbnails asked for")
        little = s["window_small"]
        print(f"  RSS MB: empty window {w['rss_mb_empty']:.0f}, first photo {w['rss_mb_first_photo']:.0f}, project "
              f"open {w['rss_mb_opened']:.0f}, indexing planned {w['rss_mb_planned']:.0f} ({s['small']} photos: "
              f"{little['rss_mb_opened']:.0f}, {little['rss_mb_planned']:.0f}); per photo "
              f"{s['bytes_per_photo_opened']:.0f} B with the project open, {s['bytes_per_photo_planned']:.0f} B "
              "once indexing has planned")
    if "indexing" in out:
        i = out["indexing"]
        print(f"indexing {i['photos']} photos: CLI {i['cli_photos_per_s']:.2f} photos/s, window "
              f"{i['window_photos_per_s']:.2f} photos/s ({i['platform']}), ratio {i['ratio']:.2f} "
              f"(runs: CLI {', '.join(f'{r:.2f}' for r in i['cli_runs'])}; window "
              f"{', '.join(f'{r:.2f}' for r in i['window_runs'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
