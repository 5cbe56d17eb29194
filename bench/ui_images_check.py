"""Check, in a real headless browser, that images in a Prefect markdown artifact display.

Opens the newest artifact with a given key in the Prefect UI (served by the Prefect
server itself, V1 UI at ``/`` and the new V2 UI at ``/v2/``), waits for the markdown
to render, prints for every ``<img>`` on the page its alt text, whether it loaded
(``naturalWidth > 0``) and its natural and displayed size, and saves a full-page
screenshot.

Getting the browser (what worked on this Debian 12 machine, which reaches only the
package registries: ``playwright install chromium`` would download a browser build from
a host that is not reachable, so Debian's Chromium is driven by Playwright instead)::

    apt-get update && apt-get install -y chromium        # -> /usr/bin/chromium
    python3 -m venv /tmp/browser-venv
    /tmp/browser-venv/bin/pip install playwright         # Python driver only

Keep the browser venv separate from the project's venv; this script needs only
``playwright`` and the standard library.

Usage (server already running, e.g.
``PREFECT_HOME=/tmp/pf-ui prefect server start --host 127.0.0.1 --port 4300``)::

    /tmp/browser-venv/bin/python bench/ui_images_check.py \\
        --server http://127.0.0.1:4300 --key my-report-key \\
        --screenshot /tmp/ui-check/report.png [--ui v1|v2|both] [--flow-run-tab]

``--ui both`` saves the V2 screenshot next to --screenshot with suffix ``-v2``.
``--flow-run-tab`` also opens the artifact's flow run page, clicks its Artifacts tab
(which shows only a card per artifact, not the markdown), clicks the card and checks the
page it leads to (screenshot suffix ``-flowrun``).

Findings on Prefect 3.9.1 (both UIs): markdown data URIs
``![alt](data:image/png;base64,...)`` and HTML ``<img src="data:image/png;base64,...">``
render and load; a relative path ``![alt](file.png)`` shows a broken image.
Exit status: 0 when every artifact image loaded, 1 when any did not, 2 when none found.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request

_JS_IMAGES = """
() => Array.from(document.images).map(img => ({
  alt: img.getAttribute('alt') || '',
  src: (img.getAttribute('src') || '').slice(0, 40),
  src_len: (img.getAttribute('src') || '').length,
  complete: img.complete,
  naturalWidth: img.naturalWidth,
  naturalHeight: img.naturalHeight,
  shownWidth: Math.round(img.getBoundingClientRect().width),
  shownHeight: Math.round(img.getBoundingClientRect().height),
}))
"""

_JS_IMAGES_DONE = "() => Array.from(document.images).every(img => img.complete)"

_JS_CONTENT_HEIGHT = """
() => Math.max(document.documentElement.scrollHeight,
  ...Array.from(document.querySelectorAll('*')).map(el => el.scrollHeight + 200))
"""
_MAX_SHOT_H = 16000  # px; taller pages are cut off in the screenshot only

_UI_PREFIX = {"v1": "", "v2": "/v2"}


def latest_artifact(server: str, key: str) -> dict:
    """Newest artifact (not the artifact *collection*) with ``key``.

    ``GET /api/artifacts/{key}/latest`` returns the collection row, whose ``id`` is not
    the id that the UI's ``/artifacts/artifact/<id>`` page expects, hence the filter.
    """
    api = server.rstrip("/") + "/api"
    body = json.dumps({"artifacts": {"key": {"any_": [key]}},
                       "sort": "CREATED_DESC", "limit": 1}).encode()
    req = urllib.request.Request(f"{api}/artifacts/filter", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        found = json.loads(resp.read().decode())
    if not found:
        raise SystemExit(f"no artifact with key {key!r} at {api}")
    return found[0]


def _default_browser() -> str | None:
    for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"):
        if os.path.exists(path):
            return path
    return None  # fall back to Playwright's own browser download, if installed


def _suffixed(path: str, suffix: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}{suffix}{ext or '.png'}"


def _report(page, label: str, screenshot: str, text_probe: str | None, timeout_ms: int):
    """Wait for the rendered markdown and its images, screenshot, print every <img>."""
    if text_probe:  # single-page app: wait until the markdown has been rendered
        try:
            page.get_by_text(text_probe, exact=False).first.wait_for(timeout=timeout_ms)
        except Exception:  # noqa: BLE001 - report what is there anyway
            print(f"  (text {text_probe!r} not found on the page within {timeout_ms} ms)")
    try:
        page.wait_for_function(_JS_IMAGES_DONE, timeout=timeout_ms)
    except Exception:  # noqa: BLE001
        print("  (some images still incomplete at timeout)")
    page.wait_for_timeout(500)
    os.makedirs(os.path.dirname(os.path.abspath(screenshot)) or ".", exist_ok=True)
    # The V1 UI scrolls an inner container, so a "full page" screenshot stops at the
    # viewport: grow the viewport to the tallest scrollable content first (capped).
    viewport = page.viewport_size
    tall = page.evaluate(_JS_CONTENT_HEIGHT)
    if viewport and tall > viewport["height"]:
        page.set_viewport_size({"width": viewport["width"], "height": min(tall, _MAX_SHOT_H)})
        page.wait_for_timeout(300)
    page.screenshot(path=screenshot, full_page=True)
    if viewport:
        page.set_viewport_size(viewport)
    images = page.evaluate(_JS_IMAGES)
    print(f"[{label}] {page.url}")
    print(f"  screenshot: {screenshot}")
    print(f"  {len(images)} <img> element(s)")
    for im in images:
        loaded = im["naturalWidth"] > 0
        print(
            f"  alt={im['alt']!r:28} loaded={str(loaded):5} "
            f"natural={im['naturalWidth']}x{im['naturalHeight']} "
            f"shown={im['shownWidth']}x{im['shownHeight']} "
            f"src={im['src']!r}{'...' if im['src_len'] > 40 else ''} ({im['src_len']} chars)"
        )
    return images


def check_ui(page, server: str, ui: str, art: dict, screenshot: str, probe: str | None,
             flow_run_tab: bool, timeout_ms: int) -> list[dict]:
    base = server + _UI_PREFIX[ui]
    page.goto(f"{base}/artifacts/artifact/{art['id']}", wait_until="networkidle",
              timeout=timeout_ms)
    images = _report(page, f"{ui} artifact page", screenshot, probe, timeout_ms)
    if flow_run_tab and art.get("flow_run_id"):
        page.goto(f"{base}/runs/flow-run/{art['flow_run_id']}", wait_until="networkidle",
                  timeout=timeout_ms)
        # V1 tabs are <li class="p-tab"> in a role=tablist; V2 tabs have role=tab.
        tab = page.get_by_role("tab", name="Artifacts")
        if not tab.count():
            tab = page.locator("[role=tablist]").get_by_text("Artifacts", exact=True)
        tab.first.click(timeout=timeout_ms)
        page.wait_for_load_state("networkidle", timeout=timeout_ms)
        # each artifact card is a link to that artifact's page
        card = page.locator(f'a[href*="/artifacts/artifact/{art["id"]}"]').first
        card.wait_for(timeout=timeout_ms)
        inline = page.evaluate(_JS_IMAGES)
        print(f"[{ui} flow run Artifacts tab] {len(inline)} <img> shown inline "
              f"(the tab lists artifact cards only); clicking the card")
        card.click(timeout=timeout_ms)
        page.wait_for_load_state("networkidle", timeout=timeout_ms)
        images += _report(page, f"{ui} flow run tab -> artifact",
                          _suffixed(screenshot, "-flowrun"), probe, timeout_ms)
    return images


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default="http://127.0.0.1:4200", help="Prefect server root URL")
    ap.add_argument("--key", required=True, help="artifact key; the newest one is opened")
    ap.add_argument("--screenshot", required=True, help="path of the PNG screenshot")
    ap.add_argument("--ui", choices=["v1", "v2", "both"], default="v1",
                    help="which UI to check (V1 at /, V2 at /v2/)")
    ap.add_argument("--flow-run-tab", action="store_true",
                    help="also go through the flow run page's Artifacts tab")
    ap.add_argument("--browser", default=_default_browser(),
                    help="browser executable (default: Debian's /usr/bin/chromium)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per wait")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1000)
    args = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright

    server = args.server.rstrip("/")
    art = latest_artifact(server, args.key)
    md = art.get("data") or ""
    print(f"artifact {art['id']} key={art.get('key')} type={art.get('type')} "
          f"markdown={len(md)} chars flow_run={art.get('flow_run_id')}")
    # A heading of the markdown lets us wait for the rendered content.
    probe = next((ln.lstrip("#").strip() for ln in md.splitlines()
                  if ln.startswith("#") and ln.lstrip("#").strip()), None)

    timeout_ms = int(args.timeout * 1000)
    uis = ["v1", "v2"] if args.ui == "both" else [args.ui]
    content: list[dict] = []
    with sync_playwright() as p:
        launch = {"headless": True}
        if args.browser:
            launch["executable_path"] = args.browser
        browser = p.chromium.launch(**launch)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        for ui in uis:
            shot = args.screenshot if ui == uis[0] else _suffixed(args.screenshot, f"-{ui}")
            images = check_ui(page, server, ui, art, shot, probe, args.flow_run_tab, timeout_ms)
            # artifact images: those with alt text or a data URI (not UI icons)
            content += [im for im in images if im["alt"] or im["src"].startswith("data:")]
        browser.close()

    if not content:
        print("no artifact images found")
        return 2
    bad = [im for im in content if im["naturalWidth"] <= 0]
    print(f"{len(content) - len(bad)}/{len(content)} artifact image(s) loaded")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
