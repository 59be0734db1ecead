"""The report keeps a long unbroken string (a label, an id, a text) inside the page's width.

A 200-character checkpoint label sat in a table cell with no wrapping rule, so the table, and the
page, grew to twice the window's width (a review could not render it; this test does, in Debian's
chromium, as tests/test_report.py does). The page has no script (its CSP forbids one), so a page
around it measures it: an iframe of the report, read through --allow-file-access-from-files.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import capsule

from .clirun import capsule_cli
from .test_report import chromium


def _width(page: Path, tmp: Path) -> tuple[int, int]:
    wrap = tmp / "wrap.html"
    wrap.write_text(f'<!doctype html><html><body><iframe id="f" src="{page.name}" style="width:1100px;'
                    'height:800px"></iframe><script>document.getElementById("f").onload = function () {'
                    'var d = this.contentDocument.documentElement;'
                    'document.body.setAttribute("data-width", d.scrollWidth + "/" + d.clientWidth); };'
                    '</script></body></html>')
    r = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={tmp / 'profile'}", "--allow-file-access-from-files",
                        "--virtual-time-budget=5000", "--dump-dom", wrap.resolve().as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r'data-width="(\d+)/(\d+)"', r.stdout)
    assert m is not None, r.stdout[-2000:]
    return int(m.group(1)), int(m.group(2))


def test_a_long_label_and_text_stay_inside_the_page(tmp_path: Path) -> None:
    p = tmp_path / "r.capsule"
    key = capsule.generate_key()
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("x" * 3000, tags=["t" * 250], meta={"m": "y" * 2000})
            tx.decide("d" * 400, rationale="r" * 3000)
        cap.checkpoint("L" * 200, key=key)
    page = tmp_path / "r.html"
    capsule_cli("report", str(p), "-o", str(page))
    scroll, client = _width(page, tmp_path)
    assert scroll <= client, (scroll, client)
