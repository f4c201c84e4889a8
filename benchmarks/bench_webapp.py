"""The labelling web app with a big queue: time to first gallery paint and label-to-next-image latency,
measured in real headless Chromium (Playwright) against a real ``bentoml serve``.

    .venv/bin/python benchmarks/bench_webapp.py --candidates 20000 --labels 100 --out benchmarks/results/webapp.json

Set-up: ``--candidates`` real PNG files (64x64) in one campaign folder, all unlabelled and scored by the
served model version, so the queue holds them all. Then, in one browser:

- first paint: from navigation (signed in, cookie set) until the first thumbnail is decoded on screen;
  cold (the service renders every thumbnail) and warm (rendered thumbnails cached by the service);
- label-to-next: from the key press (``n``) until the next candidate's large view is decoded on screen;
  the posts themselves go in the background and are checked stored afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
FIRST_THUMB = "() => { const i = document.querySelector('.tile img'); return i && i.complete && i.naturalWidth > 0 }"
NEXT_SHOWN = """id => { const b = document.querySelector('#big'); const s = document.querySelector('.tile.sel');
  return s && s.dataset.id !== id && b.dataset.id === s.dataset.id && b.complete && b.naturalWidth > 0 }"""


def world(root: Path, n: int):
    import numpy as np
    from PIL import Image

    from anomalymatch.campaign_images import setup_campaign
    from anomalymatch.config import AppConfig, ServingConfig
    from anomalymatch.labelstore import LabelStore
    from anomalymatch.users import add_user
    from tests.helpers.serving import export_tiny_model

    folder = root / "images"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"src{i:06d}.png")
    model = export_tiny_model(root / "model.onnx", seed=1, size=64, version="7")
    config = AppConfig(data_dir=str(root / "home"), serving=ServingConfig(port=0, model=str(model)), workers=1)
    store = LabelStore.from_config(config.labelstore, config.data_path)
    setup_campaign(store, "bench", [folder])
    ids = [f"src{i:06d}.png" for i in range(n)]
    store.add_scores("7", ids, rng.random(n))
    token = add_user(store, "bench", "labeller")
    return config, store, token


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, default=20_000)
    p.add_argument("--labels", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--out", default="benchmarks/results/webapp.json")
    args = p.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from playwright.sync_api import sync_playwright

    from serving.launch import start_service

    with tempfile.TemporaryDirectory(prefix="am-webapp-") as tmp:
        t0 = time.perf_counter()
        config, store, token = world(Path(tmp), args.candidates)
        print(f"{args.candidates} candidates ready in {time.perf_counter() - t0:.0f} s", flush=True)
        with start_service(config.replace(serving=replace(config.serving, port=0))) as svc, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS)
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            page = context.new_page()
            assert context.request.post(svc.url + "/ui/api/signin", data={"token": token}).ok  # the cookie
            paints = []
            for k in range(args.repeats):  # the first load renders every thumbnail; later ones hit the cache
                t = time.perf_counter()
                page.goto(svc.url + f"/ui/?r={k}#queue")
                page.wait_for_function(FIRST_THUMB, polling="raf")
                paints.append((time.perf_counter() - t) * 1000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('.tile img')].every(i => !i.loading || i.complete)"
            )
            latencies = []
            for _ in range(args.labels):
                shown = page.get_attribute(".tile.sel", "data-id")
                t = time.perf_counter()
                page.keyboard.press("n")
                page.wait_for_function(NEXT_SHOWN, arg=shown, polling="raf")
                latencies.append((time.perf_counter() - t) * 1000)
            page.wait_for_selector("#pending", state="hidden", timeout=60_000)
            stored = len(store.history())
            browser.close()
        store.close()
    q = statistics.quantiles(latencies, n=20)
    result = {
        "meta": {"host": platform.node(), "cpus": os.cpu_count(), "candidates": args.candidates},
        "first_paint_ms": {"cold": round(paints[0], 1), "warm_median": round(statistics.median(paints[1:]), 1)},
        "label_to_next_ms": {
            "p50": round(statistics.median(latencies), 1),
            "p95": round(q[18], 1),
            "max": round(max(latencies), 1),
            "n": len(latencies),
        },
        "labels_stored": stored,
    }
    print(json.dumps(result, indent=1))
    if stored != args.labels:
        print(f"expected {args.labels} labels stored, found {stored}", file=sys.stderr)
        return 1
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
