"""Open an evaluate report in headless Chromium: tables and images must render, no broken image link.

Checks, on ``report.html`` (built here unless ``--report`` is given):

1. ``chromium --headless --dump-dom`` of a copy of the page with a small script that records, after
   ``load``, each ``<img>``'s ``complete`` and ``naturalWidth`` (0 = broken in the browser);
2. every ``<img src>`` is a file under the report folder that decodes as a PNG (matplotlib);
3. the DOM has tables with rows and cells;
4. ``chromium --screenshot`` writes a PNG that decodes and is not blank.

Without ``--report``: ``--quick`` builds a report from 40 simulated stamps and two synthetic
"methods" (truth plus noise; no network needed); otherwise ``galnet demo --n 200 --fit-n 40`` is
run with ``--model`` (default ``hsc-r``). If Chromium is absent (Debian: ``apt-get install
chromium``) the check is skipped with a message. The last line is one JSON object.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from _common import emit, parser

_PROBE = """<script>
window.addEventListener('load', function () {
  var r = Array.prototype.map.call(document.images, function (im) {
    return {src: im.getAttribute('src'), complete: im.complete, w: im.naturalWidth, h: im.naturalHeight};
  });
  var pre = document.createElement('pre');
  pre.id = 'galnet-image-probe';
  pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});
</script>"""


class _DomSummary(HTMLParser):
    """Counts tables / rows / cells and collects ``img src`` and the probe's JSON."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = self.rows = self.cells = 0
        self.imgs: list[str] = []
        self.probe = ""
        self._in_probe = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables += 1
        elif tag == "tr":
            self.rows += 1
        elif tag in ("td", "th"):
            self.cells += 1
        elif tag == "img":
            self.imgs.append(a.get("src", ""))
        elif tag == "pre" and a.get("id") == "galnet-image-probe":
            self._in_probe = True

    def handle_endtag(self, tag):
        if tag == "pre":
            self._in_probe = False

    def handle_data(self, data):
        if self._in_probe:
            self.probe += data


def find_chromium() -> str | None:
    """Path of a Chromium / Chrome executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        p = shutil.which(name)
        if p:
            return p
    return None


def _chromium(exe: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           "--allow-file-access-from-files", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _decode_png(path: Path) -> tuple[int, int]:
    import matplotlib.image as mpimg

    a = mpimg.imread(path)
    return int(a.shape[1]), int(a.shape[0])


def build_quick_report(out: Path) -> Path:
    """A report from 40 simulated stamps and two synthetic methods (no network needed)."""
    import torch

    from galnet.evaluate import MethodResult, TruthSet, evaluate_methods, write_report
    from galnet.params import IX_MAG, IX_N, IX_RE
    from galnet.simulate import generate_batch, load_preset

    torch.set_num_threads(1)
    cfg = load_preset("hsc-r")
    d = generate_batch(cfg, 40, seed=11, return_models=True)
    rng = np.random.default_rng(0)
    t = d["params"]
    a = t + rng.normal(0, [0.1, 0.1, 0.05, 0, 0, 0.02, 3.0], t.shape)
    a[:, IX_RE] = t[:, IX_RE] * np.exp(rng.normal(0, 0.1, len(t)))
    a[:, IX_N] = t[:, IX_N] * np.exp(rng.normal(0, 0.15, len(t)))
    b = t.copy()
    b[:, IX_MAG] += 0.05
    b[20:] = np.nan
    truth = TruthSet.from_arrays(d, gain=cfg.gain, models=d["models"])
    ev = evaluate_methods(truth, [MethodResult("noisy", a, time_per_galaxy=1e-3),
                                  MethodResult("biased-half", b, time_per_galaxy=0.2)])
    return write_report(ev, out, title="report_check (synthetic)",
                        notes=["benchmarks/report_check.py --quick"])


def build_demo_report(out: Path, model: str) -> Path:
    """``galnet demo --n 200 --fit-n 40`` into ``out``."""
    from galnet.evaluate.demo import run_demo

    return run_demo(n=200, fit_n=40, out=out, model=model, progress=False).report


def check_report(report: Path, exe: str, workdir: Path) -> dict:
    """Run the browser checks on ``report`` (see the module docstring); returns the figures."""
    report = report.resolve()
    folder = report.parent
    res: dict = {"report": str(report)}
    # 1. DOM after load, with the image probe (a temporary copy next to the report: same relative links)
    probe_page = folder / "_report_check_probe.html"
    probe_page.write_text(report.read_text().replace("</body>", _PROBE + "\n</body>"))
    try:
        cp = _chromium(exe, "--virtual-time-budget=10000", "--dump-dom", probe_page.as_uri())
    finally:
        probe_page.unlink(missing_ok=True)
    dom = _DomSummary()
    dom.feed(cp.stdout)
    res.update(tables=dom.tables, table_rows=dom.rows, table_cells=dom.cells, images=len(dom.imgs))
    try:
        probe = json.loads(dom.probe) if dom.probe else []
    except json.JSONDecodeError:
        probe = []
    res["browser_probe"] = bool(probe)
    res["browser_broken"] = [p["src"] for p in probe if not (p.get("complete") and p.get("w", 0) > 0)]
    res["browser_loaded"] = sum(1 for p in probe if p.get("complete") and p.get("w", 0) > 0)
    # 2. every <img> file exists and decodes
    broken = []
    for src in dom.imgs:
        p = (folder / src).resolve()
        try:
            w, h = _decode_png(p)
            if w == 0 or h == 0:
                broken.append(src)
        except Exception:  # noqa: BLE001 - any failure to read counts as broken
            broken.append(src)
    res["files_broken"] = broken
    # 4. screenshot
    shot = workdir / "report_screenshot.png"
    _chromium(exe, "--window-size=1400,4000", f"--screenshot={shot}", report.as_uri())
    try:
        import matplotlib.image as mpimg

        a = mpimg.imread(shot)
        res["screenshot"] = str(shot)
        res["screenshot_size"] = [int(a.shape[1]), int(a.shape[0])]
        res["screenshot_nonblank"] = bool(np.ptp(a[..., :3]) > 0.1)
    except Exception:  # noqa: BLE001
        res["screenshot"], res["screenshot_nonblank"] = None, False
    res["ok"] = bool(res["tables"] >= 3 and res["table_rows"] > res["tables"] and res["images"] > 0
                     and res["browser_probe"] and not res["browser_broken"]
                     and res["browser_loaded"] == res["images"] and not broken and res["screenshot_nonblank"])
    return res


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--report", help="an existing report.html (default: build one)")
    p.add_argument("--model", default="hsc-r", help="network for the non-quick demo report")
    p.add_argument("--keep", help="folder to keep the built report and the screenshot in")
    args = p.parse_args()
    exe = find_chromium()
    if exe is None:
        print("report_check: Chromium not found (Debian: apt-get install chromium); skipped", file=sys.stderr)
        emit({"skipped": True, "reason": "chromium not found", "ok": None})
        return 0
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="galnet-report-check-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.report:
        report = Path(args.report)
        if not report.exists():
            print(f"report_check: {report}: no such file", file=sys.stderr)
            return 2
        built = "given"
    elif args.quick:
        report, built = build_quick_report(work / "report"), "synthetic"
    else:
        report, built = build_demo_report(work / "demo", args.model), f"demo --model {args.model}"
    res = check_report(report, exe, work)
    for k in ("tables", "table_rows", "images", "browser_loaded", "browser_broken", "files_broken",
              "screenshot"):
        print(f"{k}: {res.get(k)}")
    emit({"built": built, **res})
    if not args.keep and not args.report:
        shutil.rmtree(work / "report", ignore_errors=True)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
