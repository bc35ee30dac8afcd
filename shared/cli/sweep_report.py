"""What `vit-suite sweep` writes: sweep.json (every cell), sweep.html (the matrix), junit.xml (for CI systems).

The HTML file is self-contained (no network, no external file): rows are checkpoints (at an image size and batch),
columns are backend x dtype; each cell shows pass/fail, worst stage / bound, the first stage out of bound and its
time, and a click opens that cell's per-stage plot (an SVG drawn here, in Python).
"""
from __future__ import annotations

import html
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

from .. import fileio as F

STATUS_CLASS = {"pass": "pass", "FAIL": "fail", "non-finite": "fail", "error": "error", "unsupported": "unsupported"}


def _size(cell: dict) -> str:
    s = cell["image_size"]
    return "native" if s is None else f"{s[0]}x{s[1]}"


def _column(cell: dict) -> str:
    """As Cell.column: backend x dtype for a forward cell, backend (or source library) x kind for the others."""
    return f"{cell['backend']} {cell['dtype'] if cell['kind'] == 'forward' else cell['kind']}"


def _row(cell: dict) -> str:
    return f"{cell['checkpoint']} @{_size(cell)} b{cell['batch']}"


def to_json(manifest: Path, prepared, records: list[dict], executor: dict) -> dict:
    cells = []
    for r in records:
        cells.append({**r["cell"], "key": r["key"], "status": r["status"], "worst_stage": r["worst_stage"],
                      "worst_ratio": r["worst_ratio"], "first_failure": r["first_failure"],
                      "seconds": r["seconds"], "cached": r.get("cached", False), "versions": r.get("versions"),
                      "error": r.get("error"), "node": r.get("node"), "stages": r["stages"]})
    counts = {s: sum(c["status"] == s for c in cells) for s in STATUS_CLASS}
    return {
        "manifest": str(manifest), "executor": executor,
        "summary": {"cells": len(cells), **counts,
                    "passed": counts["FAIL"] + counts["non-finite"] + counts["error"] == 0},
        "checkpoints": [{"name": p.checkpoint.name, "source": p.source_id, "weights": str(p.weights),
                         "config": p.cfg.name} for p in prepared],
        "cells": cells,
    }


# ------------------------------------------------------------------------------------------------- the plot
def stage_plot(cell: dict, width: int = 720, height: int = 300) -> str:
    """Per-stage error (dots, red above the bound) and bound (grey steps), log scale, as an inline SVG."""
    rows = cell["stages"]
    if not rows:
        return "<p>no per-stage results" + (f": {html.escape(cell['error'] or '')}" if cell.get("error") else "") + "</p>"
    left, right, top, bottom = 60, 10, 10, 110
    vals = [r["rel_l2"] for r in rows if r["rel_l2"] is not None and r["rel_l2"] > 0] + [r["bound"] for r in rows]
    lo = math.floor(math.log10(max(min(vals), 1e-12)))
    hi = math.ceil(math.log10(max(max(vals), 1e-12))) + (1 if min(vals) == max(vals) else 0)
    n = len(rows)
    pw, ph = width - left - right, height - top - bottom

    def x(i):
        return left + (i + 0.5) * pw / n

    def y(v):
        v = min(max(v, 10.0 ** lo), 10.0 ** hi)
        return top + ph * (hi - math.log10(v)) / max(hi - lo, 1)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="plot" '
             f'role="img" aria-label="per-stage error and bound">']
    for e in range(lo, hi + 1):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(10.0 ** e):.1f}" y2="{y(10.0 ** e):.1f}" '
                     f'stroke="#eee"/><text x="{left - 6}" y="{y(10.0 ** e) + 4:.1f}" text-anchor="end" '
                     f'font-size="11">1e{e}</text>')
    bound = " ".join(f"{x(i) - pw / n / 2:.1f},{y(r['bound']):.1f} {x(i) + pw / n / 2:.1f},{y(r['bound']):.1f}"
                     for i, r in enumerate(rows))
    parts.append(f'<polyline points="{bound}" fill="none" stroke="#999" stroke-width="2"/>')
    step = max(1, n // 40)
    for i, r in enumerate(rows):
        v = r["rel_l2"]
        name = html.escape(r["stage"])
        if v is None:
            parts.append(f'<text x="{x(i):.1f}" y="{top + 12}" text-anchor="middle" fill="#c00" font-size="11">'
                         f'NaN<title>{name}: not finite</title></text>')
        else:
            color = "#1a7f37" if r["passed"] else "#c00"
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(max(v, 10.0 ** lo)):.1f}" r="4" fill="{color}">'
                         f'<title>{name}: {v:.3e} / bound {r["bound"]:.1e}</title></circle>')
        if i % step == 0:
            parts.append(f'<text transform="translate({x(i) + 3:.1f},{height - bottom + 8}) rotate(60)" '
                         f'font-size="10">{name[:28]}</text>')
    parts.append(f'<text x="12" y="{top + ph / 2:.0f}" transform="rotate(-90 12 {top + ph / 2:.0f})" '
                 f'text-anchor="middle" font-size="11">relative L2 error</text></svg>')
    return "".join(parts)


# ------------------------------------------------------------------------------------------------- the page
CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table.matrix{border-collapse:collapse}
.matrix th,.matrix td{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:center}
.matrix th.row{text-align:left;font-weight:normal;font-family:monospace}
.matrix td.cell{cursor:pointer;min-width:7em}
.pass{background:#dafbe1}.fail{background:#ffd7d5}.error{background:#ffb3ad}.unsupported{background:#fff3c4}
.status{font-weight:bold}.detail{font-size:11px;color:#444}
#modal{display:none;position:fixed;inset:0;background:rgba(0,0,0,.35)}
#modal .box{background:#fff;margin:4em auto;padding:1em 1.5em;width:780px;max-height:80vh;overflow:auto;border-radius:6px}
#modal .close{float:right;cursor:pointer;border:0;background:#eee;padding:2px 10px}
"""

JS = """
function openCell(id){
  var t=document.getElementById('plot-'+id);
  document.getElementById('modal-body').innerHTML=t.innerHTML;
  document.getElementById('modal').style.display='block';
}
function closeModal(){document.getElementById('modal').style.display='none';}
document.addEventListener('keydown',function(e){if(e.key==='Escape')closeModal();});
document.querySelectorAll('td.cell').forEach(function(td){
  td.addEventListener('click',function(){openCell(td.dataset.id);});
});
document.getElementById('modal').addEventListener('click',function(e){if(e.target.id==='modal')closeModal();});
"""


def _num(v) -> str:
    return "NaN" if v is None else f"{v:.3e}"


def to_html(report: dict) -> str:
    cells = report["cells"]
    columns = list(dict.fromkeys(_column(c) for c in cells))
    rows = list(dict.fromkeys(_row(c) for c in cells))
    at = {(_row(c), _column(c)): (i, c) for i, c in enumerate(cells)}
    s = report["summary"]
    e = html.escape
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>vit-suite sweep</title>",
           f"<style>{CSS}</style></head><body>",
           f"<h1>vit-suite sweep</h1><p>{e(report['manifest'])}: {s['cells']} cells, {s['pass']} pass, "
           f"{s['FAIL']} out of bound, {s['non-finite']} non-finite, {s['error']} crashed, {s['unsupported']} unsupported. "
           "Each cell: status, worst stage / its bound, the first stage out of bound, time. "
           "Click a cell for its per-stage plot.</p>",
           "<table class='matrix'><thead><tr><th>checkpoint @ image size, batch</th>"]
    out += [f"<th>{e(col)}</th>" for col in columns]
    out.append("</tr></thead><tbody>")
    plots = []
    for row in rows:
        out.append(f"<tr><th class='row'>{e(row)}</th>")
        for col in columns:
            if (row, col) not in at:
                out.append("<td></td>")
                continue
            i, c = at[(row, col)]
            worst = "" if c["worst_ratio"] is None else f"{e(c['worst_stage'])} {c['worst_ratio']:.2f}"
            first = (f"first out of bound: {e(c['first_failure'])}" if c["first_failure"]
                     else (e((c.get("error") or "").splitlines()[-1][:80]) if c.get("error") else "none out of bound"))
            out.append(f"<td class='cell {STATUS_CLASS[c['status']]}' data-id='{i}' title='click for the plot'>"
                       f"<div class='status'>{e(c['status'])}</div><div class='detail'>{worst}</div>"
                       f"<div class='detail'>{first}</div><div class='detail'>{c['seconds']:.1f} s"
                       f"{' (cached)' if c['cached'] else ''}</div></td>")
            title = f"{row} / {col}: {c['status']}"
            table = "".join(f"<tr><td>{e(r['stage'])}</td><td>{_num(r['rel_l2'])}</td><td>{r['bound']:.1e}</td>"
                            f"<td>{'pass' if r['passed'] else 'FAIL'}</td></tr>" for r in c["stages"])
            plots.append(f"<template id='plot-{i}'><h3>{e(title)}</h3>{stage_plot(c)}"
                         + (f"<pre>{e(c['error'])}</pre>" if c.get("error") else "")
                         + f"<table class='matrix'><tr><th>stage</th><th>rel L2</th><th>bound</th><th></th></tr>"
                           f"{table}</table></template>")
        out.append("</tr>")
    out.append("</tbody></table>")
    out += plots
    out.append("<div id='modal'><div class='box'><button class='close' onclick='closeModal()'>close</button>"
               "<div id='modal-body'></div></div></div>")
    out.append(f"<script>{JS}</script></body></html>")
    return "".join(out)


def to_junit(report: dict) -> str:
    cells = report["cells"]
    s = report["summary"]
    suite = ET.Element("testsuite", name="vit-suite sweep", tests=str(len(cells)),
                       failures=str(s["FAIL"] + s["non-finite"]),
                       errors=str(s["error"]), skipped=str(s["unsupported"]),
                       time=f"{sum(c['seconds'] for c in cells):.3f}")
    for c in cells:
        case = ET.SubElement(suite, "testcase", classname=f"sweep.{c['checkpoint']}",
                             name=f"{_column(c)} @{_size(c)} b{c['batch']}", time=f"{c['seconds']:.3f}")
        if c["status"] == "FAIL":
            worst = "" if c["worst_ratio"] is None else f"; worst {c['worst_stage']} at {c['worst_ratio']:.2f}x its bound"
            ET.SubElement(case, "failure", message=f"first stage out of bound: {c['first_failure']}{worst}").text = \
                "\n".join(f"{r['stage']}: {r['rel_l2']} / {r['bound']}" for r in c["stages"] if not r["passed"])
        elif c["status"] == "non-finite":
            ET.SubElement(case, "failure", message=(c.get("error") or "non-finite output").splitlines()[-1][:200])
        elif c["status"] == "error":
            ET.SubElement(case, "error", message=(c.get("error") or "crashed").splitlines()[-1][:200]).text = c.get("error")
        elif c["status"] == "unsupported":
            ET.SubElement(case, "skipped", message=(c.get("error") or "unsupported").splitlines()[-1][:200])
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_reports(out: Path, manifest: Path, prepared, records: list[dict], executor: dict) -> list[Path]:
    report = to_json(manifest, prepared, records, executor)
    texts = {"sweep.json": json.dumps(report, indent=1), "sweep.html": to_html(report), "junit.xml": to_junit(report)}
    paths = []
    for name, text in texts.items():
        paths.append(F.atomic_write(out / name, lambda tmp, text=text: Path(tmp).write_text(text)))
    return paths
