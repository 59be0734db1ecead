"""``capsule report``: one self-contained HTML page whose figures are the ``--json`` figures.

The page is rendered by a real headless browser (Debian's ``chromium``; ``make test``
installs it): no console message (a script, a blocked request or a CSP violation would
log one), every figure in the rendered DOM equal to the value its JSON Pointer names in
``--json``, a screenshot saved. Without chromium the browser tests fail, never skip.
``python tests/test_report.py docs/report.png`` refreshes the README's screenshot (the same
week without the hostile strings).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import capsule
from capsule.report.report import report
from capsule.report.report_html import render

DAY = 86_400 * 10**9
T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)></style>&amp;'
CHROMIUM = "/usr/bin/chromium"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        self.now += 60 * 10**9
        return self.now


def build(path: Path, HOSTILE: str = HOSTILE) -> Path:  # noqa: N803  (the module's string by default)
    """A week of agent work with every part the report shows, and a hostile string in
    every user-written field: texts, summaries, scopes, labels, keys, task names."""
    clk = Clock()
    key = capsule.PrivateKey.from_seed(bytes(range(32)))
    with capsule.create(path, clock=clk) as cap:
        with cap.commit() as tx:
            tx.set_identity(f"agent {HOSTILE}", name="reporter")
            tx.constrain(f"never {HOSTILE}", scope=f"email {HOSTILE}")
            early = tx.remember(f"early fact {HOSTILE}", tier="validated")
        cap.checkpoint(f"base {HOSTILE}", key=key)
        with cap.commit() as tx:
            doomed = tx.remember("a fact later rolled back", tier="scratch")
        cap.rollback(f"base {HOSTILE}", key=key)  # `doomed` is no longer live
        for d in range(5):
            clk.now = T0 + d * DAY
            with cap.commit() as tx:
                ev = [tx.remember(f"fact {d}-{i} {HOSTILE}", tier=("scratch", "working", "validated")[i % 3])
                      for i in range(3 + d)]
                sub = tx.decide(f"sub-decision {d}", evidence=[ev[0], early])
                dec = tx.decide(f"decision {d} {HOSTILE}", evidence=[sub, *ev[1:], doomed])
                tx.note(f"day {d} report {HOSTILE}")
            with cap.commit() as tx:
                tx.approve(dec, key)
            cap.checkpoint(f"day-{d} {HOSTILE}", key=key)
            cap.run_once(f"email:{d} {HOSTILE}", lambda d=d: {"sent": d})
        with pytest.raises(ValueError), cap.action("ticket:failed"):
            raise ValueError("the ticket system said no")
        with pytest.raises(KeyboardInterrupt), cap.action(f"ticket:doubt {HOSTILE}"):
            raise KeyboardInterrupt  # an interrupted effect: the key stays in doubt
        cap.tasks.add(f"write the weekly summary {HOSTILE}", name=f"weekly {HOSTILE}")
        cap.tasks.add("archive", name="archive")
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Path]:
    """The capsule, its ``--json`` document and the page, both from the real CLI."""
    d = tmp_path_factory.mktemp("report")
    cap = build(d / "week.capsule")
    page = d / "report.html"
    before = cap.read_bytes(), cap.stat().st_mtime_ns, sorted(os.listdir(d))
    r = _cli("report", str(cap), "-o", str(page))
    assert r.returncode == 0, r.stderr
    j = _cli("report", str(cap), "--json")
    assert j.returncode == 0, j.stderr
    # a file opened for reading is never written: bytes, mtime, and no lock file beside it
    assert (cap.read_bytes(), cap.stat().st_mtime_ns, sorted(os.listdir(d))) == (*before[:2], sorted([*before[2], page.name]))
    return cap, json.loads(j.stdout), page


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "capsule_cli.main", *args], capture_output=True, text=True,
                          timeout=120)


def resolve(doc: Any, pointer: str) -> Any:
    """RFC 6901."""
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


class Figures(HTMLParser):
    """Elements with ``data-n``: (pointer, data-v or text); and every tag and attribute seen."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.figures: list[tuple[str, str]] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._open: list[tuple[str, str, list[str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("data-n") is not None:
            if a.get("data-v") is not None:
                self.figures.append((a["data-n"] or "", a["data-v"] or ""))
            else:
                self._open.append((tag, a["data-n"] or "", []))

    def handle_endtag(self, tag: str) -> None:
        if self._open and self._open[-1][0] == tag:
            t, p, text = self._open.pop()
            self.figures.append((p, "".join(text)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        for _, _, text in self._open:
            text.append(data)


def figures(html: str) -> Figures:
    f = Figures()
    f.feed(html)
    f.close()
    return f


def check_figures(html: str, doc: dict[str, Any]) -> int:
    f = figures(html)
    for pointer, shown in f.figures:
        assert shown == str(resolve(doc, pointer)), (pointer, shown)
    return len(f.figures)


# --- the page as written -----------------------------------------------------------------


def test_every_figure_on_the_page_is_the_json_figure(made: tuple[Path, dict[str, Any], Path]) -> None:
    _, doc, page = made
    html = page.read_text()
    n = check_figures(html, doc)
    assert n > 60
    s = doc["summary"]
    assert s["records"] == sum(s["records_by_kind"].values()) == doc["timeline"]["records"]
    assert s["commits"] == doc["timeline"]["commits"] == sum(d["commits"] for d in doc["timeline"]["days"])
    assert len(doc["timeline"]["days"]) == 5
    assert (doc["checkpoints"]["total"], doc["checkpoints"]["verified"], doc["checkpoints"]["failed"]) == (7, 7, 0)
    assert doc["actions"]["counts"] == {"done": 5, "in-doubt": 1, "failed": 1, "not-done": 0}
    assert doc["tasks"]["total"] == 2 and doc["decisions"]["total"] == 10 and doc["decisions"]["shown"] == 5
    # the lineage goes below the first level, and names the rolled-back fact as not live
    g = doc["decisions"]["graphs"][0]
    assert g["approvals"] and g["approvals"][0]["verified"]
    sub = next(e for e in g["evidence"] if e["kind"] == "decision")
    assert [e["kind"] for e in sub["evidence"]] == ["memory", "memory"]
    dead = [e for e in g["evidence"] if not e["live"]]
    assert [(e["kind"], e["status"]) for e in dead] == [("memory", "not live")]


def test_the_decision_graph_is_why_with_one_shared_context(made: tuple[Path, dict[str, Any], Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #11: the graph is ``why`` of each decision (its marks included), and the five
    share one read of the history (each ``why`` alone walks it: 0.35 s at 100k records)."""
    from capsule.questions._context import Context
    from capsule.report.report import report

    cap_path, doc, _ = made
    loads = []
    real = Context.load.__func__  # type: ignore[attr-defined]

    def counted(cls: type[Context], *a: Any, **k: Any) -> Context:
        loads.append(1)
        return real(cls, *a, **k)

    monkeypatch.setattr(Context, "load", classmethod(counted))
    with capsule.open(cap_path) as cap:
        mine = report(cap)
        alone = [cap.why(g["id"]).to_dict()["root"] for g in mine["decisions"]["graphs"]]
    assert len(loads) == 1 + len(alone)  # one for the report's five graphs, one per lone why
    assert mine["decisions"] == doc["decisions"] and mine["decisions"]["shown"] == 5
    for g, w in zip(mine["decisions"]["graphs"], alone, strict=True):
        assert [e["id"] for e in g["evidence"]] == [e["id"] for e in w["evidence"]]
    dead = [e for g in mine["decisions"]["graphs"] for e in g["evidence"] if not e["live"]]
    assert len(dead) == 3 and all(e["marks"] == ["rolled-back"] for e in dead)  # the doomed fact, per decision


def test_every_figure_element_carries_its_pointer(made: tuple[Path, dict[str, Any], Path]) -> None:
    """The cards, the counts in the prose and the chart marks are all tagged, so the
    check above covers them: no card, tier bar or day bar without a pointer."""
    _, doc, page = made
    html = page.read_text()
    cards = re.findall(r'<div class="card">(<b[^>]*>)', html)
    assert len(cards) == 10 and all("data-n=" in c for c in cards)
    pointers = {p for p, _ in figures(html).figures}
    assert {f"/tiers/{t}" for t in doc["tiers"]} <= pointers
    assert {f"/timeline/days/{i}/commits" for i in range(len(doc["timeline"]["days"]))} <= pointers
    assert {f"/actions/counts/{k}" for k in doc["actions"]["counts"]} <= pointers


def test_the_graph_hangs_evidence_from_its_own_parent(made: tuple[Path, dict[str, Any], Path]) -> None:
    """Regression: a second-level node's edge started at the decision, not at the
    sub-decision it rests under (column 1: x = 10 + 270 + 12)."""
    _, _, page = made
    html = page.read_text()
    first = html[html.index('aria-label="decision lineage"'):]
    first = first[: first.index("</svg>")]
    assert first.count('<path d="M292 ') == 2  # the sub-decision's two pieces of evidence
    assert first.count('<path d="M22 ') == 8  # the decision's own: the sub-decision, 6 facts, the dead one


def test_user_strings_are_escaped(made: tuple[Path, dict[str, Any], Path]) -> None:
    _, doc, page = made
    html = page.read_text()
    f = figures(html)
    assert not [t for t, _ in f.tags if t in ("img", "iframe", "object", "embed", "link", "base")]
    assert [t for t, _ in f.tags].count("style") == 1 and "script" not in [t for t, _ in f.tags]
    assert not [(t, k) for t, a in f.tags for k in a if k.startswith("on")]
    assert not [(t, k, v) for t, a in f.tags for k, v in a.items() if k in ("src", "href")]
    text = "".join(f.text)
    assert "<script>alert(1)</script>" in text  # shown as text, whole
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 10


def test_bidi_and_control_characters_are_written_out(tmp_path: Path) -> None:
    # a QA run: U+202E in a decision's summary reversed the time and id printed after it ("0001
    # EUR" read "RUE 1000"); the page now shows such characters as the terminal does
    p = tmp_path / "bidi.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        m = tx.remember("invoice \u202e1000 EUR\u202c paid \x1b[31m")
        tx.decide("pay invoice \u202e1000 EUR", evidence=[m])
    with capsule.open(p) as c:
        html = render(report(c))
    assert not any(ch in html for ch in "\u202e\u202c\x1b")
    assert "pay invoice \\u202e1000 EUR" in html
    assert "unicode-bidi:isolate" in html  # natural right-to-left text stays in its own element


def test_a_cut_graph_says_so_and_fits_the_page(tmp_path: Path) -> None:
    # a QA run: a decision resting on 3,000 records was drawn with 39, with no word of the rest,
    # and the graphs were wider than the page
    p = tmp_path / "wide.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        ev = [tx.remember(f"fact {i}") for i in range(100)]
        prev = tx.decide("plan 0", evidence=ev[:2])
        for i in range(1, 8):
            prev = tx.decide(f"plan {i}", evidence=[prev, ev[i]])
        tx.decide("the wide one", evidence=ev)
        tx.decide("a small one", evidence=ev[:1])
    with capsule.open(p) as c:
        doc = report(c)
        html = render(doc)
    graphs = {g["summary"]: g for g in doc["decisions"]["graphs"]}
    wide, deep = graphs["the wide one"], graphs["plan 7"]
    assert wide["truncated"] and wide["more"] == 100 - len(wide["evidence"]) > 0
    assert deep["truncated"] and not graphs["a small one"]["truncated"] and graphs["a small one"]["more"] == 0
    node = deep
    while node.get("evidence"):  # down the chain to where it was cut
        node = next(e for e in node["evidence"] if e["kind"] == "decision")
    assert node.get("more") == 2
    assert f"(+{wide['more']} more)" in html and html.count("Cut at ") == sum(g["truncated"] for g in graphs.values())
    assert all("viewBox=" in tag for tag in re.findall(r"<svg[^>]*>", html))
    assert "max-width:100%" in html


def test_the_page_is_a_function_of_the_file(made: tuple[Path, dict[str, Any], Path]) -> None:
    cap, doc, page = made
    with capsule.open(cap) as c:
        again = render(report(c))
        assert json.loads(json.dumps(report(c))) == doc
    assert again == page.read_text()


def test_report_at_an_earlier_commit(made: tuple[Path, dict[str, Any], Path]) -> None:
    cap, doc, _ = made
    r = _cli("report", str(cap), "--json", "--at", f"day-0 {HOSTILE}")
    assert r.returncode == 0, r.stderr
    early = json.loads(r.stdout)
    assert early["summary"]["commits"] < doc["summary"]["commits"]
    assert early["checkpoints"]["total"] == 3  # base, the rollback's, day-0
    # the page says it is a view, not the newest state (a QA run mistook one for the current state)
    view = early["summary"]["view"]
    assert view == {"at": f"day-0 {HOSTILE}", "newer_commits": doc["summary"]["commits"] - early["summary"]["commits"]}
    assert "view" not in doc["summary"]
    html = render(early)
    assert "A view at <span>day-0 " in html and f'data-n="/summary/view/newer_commits">{view["newer_commits"]}<' in html


@pytest.mark.parametrize("args, message", [
    ((), "give -o FILE.html"),
    (("-o", "{cap}"), "is the capsule being read"),
    (("-o", "{dir}"), "is a directory"),
])
def test_bad_use_is_one_line_and_writes_nothing(made: tuple[Path, dict[str, Any], Path], args: tuple[str, ...],
                                                message: str) -> None:
    cap, _, _ = made
    before = cap.read_bytes()
    argv = [a.format(cap=cap, dir=cap.parent) for a in args]
    r = _cli("report", str(cap), *argv)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert cap.read_bytes() == before


def test_a_missing_capsule_is_one_line(tmp_path: Path) -> None:
    r = _cli("report", str(tmp_path / "nope.capsule"), "-o", str(tmp_path / "r.html"))
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_a_damaged_capsule_is_refused_in_one_line(made: tuple[Path, dict[str, Any], Path], tmp_path: Path) -> None:
    """A flipped byte inside a committed RECORDS frame: exit 1, the damage named, no page."""
    cap, doc, _ = made
    bad = tmp_path / "bad.capsule"
    data = bytearray(cap.read_bytes())
    data[len(data) // 3] ^= 0xFF
    bad.write_bytes(bytes(data))
    r = _cli("report", str(bad), "-o", str(tmp_path / "r.html"))
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "r.html").exists() and bad.read_bytes() == bytes(data)


@pytest.mark.slow
def test_the_benchmark_runs(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "report.json"
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "report.py"), "--quick", "--out", str(out),
                        "--tmpdir", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"report_lib_s", "render_s", "report_cli_s", "html_bytes", "json_bytes"}


# --- in a real browser --------------------------------------------------------------------


def chromium() -> str:
    exe = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if exe is None:
        pytest.fail("chromium is not installed: `make test` installs it (Debian's chromium package, "
                    "`make chromium`); this test is never skipped")
    return exe


def browse(page: Path, tmp: Path, *, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """The DOM chromium built from ``page`` and the console messages it logged."""
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
             "--hide-scrollbars", "--window-size=1100,1500"]
    url = page.resolve().as_uri()
    r = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
    if screenshot is not None:
        s = subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=120)
        assert s.returncode == 0, s.stderr[-2000:]
        console += [line for line in s.stderr.splitlines() if ":CONSOLE" in line]
    return r.stdout, console


def test_the_browser_renders_the_page_with_no_console_message_and_the_json_figures(
        made: tuple[Path, dict[str, Any], Path], tmp_path: Path) -> None:
    _, doc, page = made
    shot = tmp_path / "report.png"
    dom, console = browse(page, tmp_path, screenshot=shot)
    assert console == []
    assert "<main>" in dom and "Decision graph" in dom
    assert check_figures(dom, doc) == check_figures(page.read_text(), doc)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_the_console_check_sees_a_script_and_a_blocked_request(tmp_path: Path) -> None:
    """Control: the same run reports a console message, a script the page's policy
    blocks, and a request it blocks, so an empty list above means something."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><script>console.error("boom")</script></body></html>')
    _, console = browse(bad, tmp_path)
    assert any('"boom"' in line for line in console), console
    from capsule.report.report_html import CSP

    blocked = tmp_path / "blocked.html"
    blocked.write_text(f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{CSP}">'
                       '</head><body><script>1</script><img src="http://192.0.2.1/x.png"></body></html>')
    _, console = browse(blocked, tmp_path)
    assert len(console) >= 2 and all("Content Security Policy" in line for line in console), console


if __name__ == "__main__":  # python tests/test_report.py docs/report.png
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        week = build(Path(d) / "week.capsule", HOSTILE="(ok)")
        assert _cli("report", str(week), "-o", f"{d}/report.html").returncode == 0
        _, console = browse(Path(d) / "report.html", Path(d), screenshot=Path(sys.argv[1]).resolve())
        assert console == [], console
