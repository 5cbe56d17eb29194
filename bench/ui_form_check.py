"""Check, in a real headless browser, the Prefect UI's parameter form of a deployment: the form
a person fills in for a custom run ("Run" -> "Custom run").

Opens the deployment's custom-run page, waits for the form, prints its section and field labels
(with how many fields each section shows), and saves a full-page screenshot. The browser as in
bench/ui_images_check.py (Debian's Chromium driven by Playwright, from its own venv).

    PREFECT_HOME=/tmp/pf-ui prefect server start --host 127.0.0.1 --port 4300 &
    PREFECT_API_URL=http://127.0.0.1:4300/api .venv/bin/python -m flows.deployments serve &
    /tmp/browser-venv/bin/python bench/ui_form_check.py --server http://127.0.0.1:4300 \\
        --flow pipeline --screenshot /tmp/ui-check/pipeline-form.png

Exit status: 0 when the form shows labelled fields, 1 when it shows none.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request

_JS_LABELS = """
() => Array.from(document.querySelectorAll('label, legend, h3, h4'))
    .map(e => e.innerText.trim()).filter(t => t.length > 0 && t.length < 120)
"""


def deployment_id(server: str, flow: str, name: str) -> str:
    """The id of deployment `flow`/`name`, from the server's API."""
    request = urllib.request.Request(f"{server}/api/deployments/name/{flow}/{name}")
    with urllib.request.urlopen(request) as response:
        return json.load(response)["id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:4300")
    parser.add_argument("--flow", default="pipeline")
    parser.add_argument("--name", default="served", help="deployment name (deployed ones are "
                        "named after their flow)")
    parser.add_argument("--screenshot", default="/tmp/ui-check/form.png")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=12000, help="viewport height: the UI "
                        "scrolls inside its own pane, so the form shows whole only in a tall one")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    url = f"{args.server}/deployments/deployment/{deployment_id(args.server, args.flow, args.name)}/run"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(url, wait_until="networkidle")
        page.wait_for_timeout(2000)
        labels = page.evaluate(_JS_LABELS)
        inputs = page.locator("input, select, textarea, [role=switch], [role=combobox]").count()
        page.screenshot(path=args.screenshot, full_page=True)
        browser.close()
    print(f"{url}: {inputs} inputs, {len(labels)} labels")
    for label in labels:
        print(f"  {label}")
    print(f"screenshot: {args.screenshot}")
    sys.exit(0 if labels and inputs else 1)


if __name__ == "__main__":
    main()
