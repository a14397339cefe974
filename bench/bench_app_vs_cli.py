"""The same removal and the same retraining, from the command line's code path and inside the
dashboard, side by side in one run (issue 13: "the app is as fast as the CLI").

- **cli**: what ``lcodec unlearn`` runs, ``remove`` (engine + evaluation) on the main
  thread; with retraining, what ``lcodec unlearn --compare retrain`` runs (removal, retraining
  and the audit against the retrained model).
- **app job**: the dashboard's own work functions (``lcodec_app.work.removal_work`` and
  ``retrain_work``) on a :class:`lcodec_app.jobs.Job` thread, exactly as a page starts them.
- **browser** (``--browser``, needs /usr/bin/chromium and playwright): a real ``streamlit run``
  server driven by headless Chromium; the time from the click on "Forget person NN" on Start
  here to the verdict on screen, then from the click on the Audit page's "Retrain from
  scratch" to the audit on screen (compared with the CLI's retraining + audit).

The order alternates (cli, app, cli, app, ...) so drift in the machine's load hits both.

    python bench/bench_app_vs_cli.py                   # identity 5, 3 repeats, removal + retraining
    python bench/bench_app_vs_cli.py --browser         # also the real dashboard
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "app"))

from lcodec_app import work  # noqa: E402
from lcodec_app.jobs import Job  # noqa: E402
from lcodec_app.workbench import ModelKey, SharedBase, Workbench  # noqa: E402
from lcodec_core.unlearning.block import warm_up  # noqa: E402
from lcodec_core.unlearning.config import UnlearnConfig  # noqa: E402
from lcodec_core.removal import compare_with_retraining, remove  # noqa: E402
from lcodec_core.requests import make_request  # noqa: E402
from lcodec_core.zoo_cache import load_or_train  # noqa: E402
from lcodec_models import state_hash  # noqa: E402


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


def app_job(work) -> object:
    job = Job("bench", "bench", work).start()
    job.wait()
    if job.error is not None:
        raise job.error
    return job.result


def browser_seconds(identity: int) -> tuple[float, float]:
    """In a real dashboard: click-to-verdict seconds of the guided first removal, then
    click-to-table seconds of the Audit page's "Retrain from scratch" (retraining + audit)."""
    import socket
    import subprocess
    import urllib.request

    from playwright.sync_api import sync_playwright
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "streamlit_app.py"),
                               "--server.port", str(port), "--server.address", "localhost",
                               "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                    if answer.read().strip() == b"ok":
                        break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                  args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = chromium.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{url}/?identity={identity}")
            button = page.get_by_role("button", name=f"Forget person {identity:02d}")
            button.wait_for(timeout=120_000)
            page.wait_for_timeout(1000)            # let the first script run settle
            start = time.perf_counter()
            button.click()
            page.locator('[data-testid="stAlertContentSuccess"], [data-testid="stAlertContentWarning"]'
                         ).filter(has_text=f"person {identity:02d}").first.wait_for(timeout=300_000)
            seconds = time.perf_counter() - start
            page.get_by_role("link", name="Audit").first.click()
            retrain = page.get_by_role("button", name="Retrain from scratch for comparison")
            retrain.wait_for(timeout=60_000)
            page.wait_for_timeout(1000)
            start = time.perf_counter()
            retrain.click()
            page.get_by_text("Could an attacker tell the photos were used?").wait_for(
                timeout=600_000)
            retrain_seconds = time.perf_counter() - start
            chromium.close()
        return seconds, retrain_seconds
    finally:
        server.terminate()
        server.wait(timeout=15)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identity", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-retrain", action="store_true", help="time the removal only")
    parser.add_argument("--browser", action="store_true", help="also the real dashboard (Chromium)")
    parser.add_argument("--browser-only", action="store_true", help="only the real dashboard")
    args = parser.parse_args(argv)
    args.browser |= args.browser_only
    torch.set_num_threads(2)
    checkpoint, bundle = load_or_train("olivetti")
    warm_up()
    request = make_request(bundle, identity=args.identity)
    shared = SharedBase(ModelKey(), checkpoint, bundle, state_hash(checkpoint.model))
    config = UnlearnConfig()
    times = {"cli removal": [], "app removal": [], "cli retrain": [], "app retrain": []}
    # "retrain" rows: removal + retraining + audit (CLI: --compare retrain; app: the Forget job
    # then the Audit page's "Retrain from scratch" job)
    load_start = os.getloadavg()[0]
    for repeat in range(0 if args.browser_only else args.repeats):
        seconds, _ = timed(lambda: remove(checkpoint, bundle, request, config))
        times["cli removal"].append(seconds)
        bench = Workbench.from_base(shared)
        seconds, removal = timed(lambda: app_job(work.removal_work(bench, request, config)))
        times["app removal"].append(seconds)
        if not args.no_retrain:
            seconds, _ = timed(lambda: compare_with_retraining(
                remove(checkpoint, bundle, request, config), checkpoint.model, checkpoint.recipe,
                bundle))
            times["cli retrain"].append(seconds)
            seconds, _ = timed(lambda: app_job(work.retrain_work(bench, removal)))
            times["app retrain"].append(seconds + times["app removal"][-1])
        print(f"repeat {repeat}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items() if v),
              file=sys.stderr, flush=True)
    print(f"Identity {args.identity}, engine default, {args.repeats} repeats alternating; "
          f"{os.cpu_count()} CPU cores; load average {load_start:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end\n")
    print("| what | cli (s, median) | app job (s, median) | app / cli | target |")
    print("|---|---|---|---|---|")
    for what in ("removal", "retrain"):
        cli, app = times[f"cli {what}"], times[f"app {what}"]
        if not cli:
            continue
        ratio = statistics.median(app) / statistics.median(cli)
        note = "removal, retraining and audit" if what == "retrain" else "engine + evaluation"
        print(f"| {what} ({note}) | {statistics.median(cli):.2f} | {statistics.median(app):.2f} | "
              f"{ratio:.2f} | <= 1.5 ({'met' if ratio <= 1.5 else f'**missed** by {ratio - 1.5:.2f}'}) |")
    if args.browser:
        browser, retrain = browser_seconds(args.identity)
        print(f"\nReal dashboard, Start here, click on 'Forget person {args.identity:02d}' to the "
              f"verdict on screen: {browser:.1f} s (target <= 10 s: "
              f"{'met' if browser <= 10 else f'**missed** by {browser - 10:.1f} s'}).")
        line = (f"Real dashboard, Audit page, click on 'Retrain from scratch for comparison' to "
                f"the audit on screen: {retrain:.1f} s")
        if times["cli retrain"] and times["cli removal"]:
            cli = statistics.median(times["cli retrain"]) - statistics.median(times["cli removal"])
            line += (f"; the CLI's retraining + audit (median of --compare retrain minus the "
                     f"removal) {cli:.1f} s: ratio {retrain / cli:.2f} (target <= 1.5: "
                     f"{'met' if retrain / cli <= 1.5 else 'missed'})")
        print(line + f". Load average {os.getloadavg()[0]:.1f}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
