"""`vit-suite check --report OUT.html`: one self-contained page (tables + inline PNG plots)."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import reference, tolerances
from ..posemb import position_table
from ..errors import UsageError
from ..fileio import atomic_write

if TYPE_CHECKING:
    from .results import CheckResult


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _error_plot(result: CheckResult) -> str:
    import matplotlib.pyplot as plt

    stages = [s for s in result.config.stage_names() if s in result.ref64]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(stages)), 3.6))
    for run in result.runs:
        if run.verdict is None:
            continue
        ax.plot(range(len(stages)), [max(s.rel_l2, 1e-18) for s in run.verdict.stages], marker="o", label=run.backend)
        bounds = [s.bound for s in run.verdict.stages]
    if any(r.verdict for r in result.runs):
        ax.plot(range(len(stages)), bounds, "k--", label="bound")
    if result.ref_lowp is not None:
        ax.plot(range(len(stages)), [max(tolerances.rel_l2(result.ref_lowp[s], result.ref64[s]), 1e-18) for s in stages],
                "k:", label=f"reference in {result.dtype}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(stages)), stages, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("relative L2 error vs float64")
    ax.set_title(f"Per-stage error, {result.config.name}, {result.dtype}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _posemb_plots(result: CheckResult, state: dict) -> str | None:
    import matplotlib.pyplot as plt

    cfg = result.config
    grid = (result.images.shape[2] // cfg.patch_size, result.images.shape[3] // cfg.patch_size)
    table = position_table(cfg, state, grid)
    if table is None:
        return None
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    im = a0.imshow(table, aspect="auto", cmap="RdBu_r", interpolation="nearest")
    a0.set_xlabel("channel")
    a0.set_ylabel("token (0 = class token)" if cfg.num_prefix_tokens else "token")
    a0.set_title(f"position table ({cfg.pos_embed}), {table.shape[0]} x {table.shape[1]}")
    fig.colorbar(im, ax=a0)
    patches = table[cfg.num_prefix_tokens:]
    unit = patches / np.maximum(np.linalg.norm(patches, axis=1, keepdims=True), 1e-12)
    centre = (grid[0] // 2) * grid[1] + grid[1] // 2
    im = a1.imshow((unit @ unit[centre]).reshape(grid), cmap="viridis", vmin=-1, vmax=1)
    a1.set_title("cos. similarity to centre patch", fontsize=9)
    fig.colorbar(im, ax=a1)
    return _png(fig)


def _attention_plot(result: CheckResult, state: dict, block: int, head: int) -> str:
    import matplotlib.pyplot as plt

    cfg = result.config
    out = reference.forward(cfg, state, result.images[:1], return_attn=True)
    probs = out[f"attn_{block}"][0, head]
    grid = (result.images.shape[2] // cfg.patch_size, result.images.shape[3] // cfg.patch_size)
    n0 = cfg.num_prefix_tokens
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    im = axes[0].imshow(probs, cmap="magma", interpolation="nearest")
    axes[0].set_title(f"block {block}, head {head}: attention (query rows)")
    fig.colorbar(im, ax=axes[0])
    img = result.images[0]
    axes[1].imshow(img[0] if img.shape[0] == 1 else np.clip((np.moveaxis(img[:3], 0, -1) - img.min()) / (np.ptp(img) + 1e-12), 0, 1),
                   cmap="gray")
    axes[1].set_title("input image 0")
    row = probs[0, n0:] if n0 else probs[n0:, n0:].mean(0)
    im = axes[2].imshow(row.reshape(grid), cmap="magma")
    axes[2].set_title("class token -> patches" if n0 else "mean attention to each patch")
    fig.colorbar(im, ax=axes[2])
    for a in axes[1:]:
        a.set_xticks([]), a.set_yticks([])
    return _png(fig)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def write_report(path: str | Path, result: CheckResult, state: dict, attn_block: int = 0, attn_head: int = 0, *,
                 overwrite: bool = True) -> Path:
    cfg = result.config
    if not (0 <= attn_block < cfg.depth and 0 <= attn_head < cfg.num_heads):
        raise UsageError(f"attention map of block {attn_block}, head {attn_head}: {cfg.name} has blocks "
                         f"0..{cfg.depth - 1} and heads 0..{cfg.num_heads - 1}")
    esc = html.escape
    badge = lambda st: f'<b class="{"ok" if st in ("pass", "unsupported") else "bad"}">{esc(st)}</b>'
    rows = []
    for r in result.runs:
        if r.verdict is None:
            rows.append([esc(r.backend), badge(r.status)] + [""] * 6 + [f"<pre>{esc(r.error or '')}</pre>"])
            continue
        last = r.verdict.stages[-1]
        f = r.verdict.first_failure
        t1 = r.verdict.top1_agreement
        rows.append([esc(r.backend), badge(r.status), f"{last.max_abs:.2e}", f"{last.max_rel:.2e}", f"{last.rel_l2:.2e}",
                     f"{last.cosine:.8f}", "-" if t1 is None else f"{100 * t1:.1f}%", esc(f.stage if f else "none"),
                     f"{r.seconds:.1f} s"])
    if result.against:  # the proof against the source library: a row of its own
        a = result.against
        rows.append([esc(f"{'artifact' if a.get('kind') == 'artifact' else 'source'}: {a['library']}"), badge(a["status"]),
                     f"{a['max_abs']:.2e}" if "max_abs" in a else "", "",
                     f"{a['rel_l2']:.2e} / {a['bound']:.1e}" if "rel_l2" in a else "",
                     f"{a['cosine']:.8f}" if "cosine" in a else "", "", esc(a["message"]), ""])
    summary = _table(["backend", "status", "max abs", "max rel", "rel L2", "cosine", "top-1 agree", "first stage out of bound",
                      "time"], rows)
    stage_rows = []
    ok = [r for r in result.runs if r.verdict is not None]
    for i, s in enumerate(cfg.stage_names()):
        if s not in result.ref64:
            continue
        cells = [esc(s)]
        for r in ok:
            st = r.verdict.stages[i]
            cells.append(f'<span class="{"ok" if st.passed else "bad"}">{st.rel_l2:.2e}</span> / {st.bound:.1e}')
        stage_rows.append(cells)
    stages = _table(["stage"] + [f"{r.backend}: rel L2 / bound" for r in ok], stage_rows)
    pairs = _table(["pair", "worst stage", "rel L2", "bound", "verdict"],
                   [[f"{esc(p.a)} vs {esc(p.b)}", esc(p.worst_stage), f"{p.rel_l2:.2e}", f"{p.bound:.2e}",
                     badge("pass" if p.passed else f"FAIL at {p.first_failure}")] for p in result.pairs])
    pos = _posemb_plots(result, state)
    numerics = _table(["choice", "value"], [[esc(k), esc(str(v))] for k, v in cfg.describe_numerics().items()])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>vit-suite check: {esc(cfg.name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:right}} th{{background:#f3f3f3}}
.ok{{color:#17702b}} .bad{{color:#b00020}} pre{{white-space:pre-wrap;text-align:left;font-size:11px}} img{{max-width:100%}}</style>
</head><body>
<h1>vit-suite check: {esc(cfg.name)} <span class="{'ok' if result.passed else 'bad'}">{result.headline}</span></h1>
<p>dtype <b>{esc(result.dtype)}</b>, batch {result.images.shape[0]}, image {result.images.shape[2]}x{result.images.shape[3]},
{cfg.depth} blocks, width {cfg.width}. Metrics on the final output (<code>logits</code>) against the float64 NumPy reference;
pass/fail on every stage under the tolerance policy below.</p>
<h2>Backends</h2>{summary}
<h2>Per-stage error</h2><img src="{_error_plot(result)}" alt="per-stage error">{stages}
<h2>Across backends</h2>{pairs if result.pairs else '<p>One backend ran: nothing to compare it with.</p>'}
{f'<h2>Position embedding</h2><img src="{pos}" alt="position table">' if pos else ''}
<h2>Attention</h2><img src="{_attention_plot(result, state, attn_block, attn_head)}" alt="attention map">
<h2>Numerics</h2>{numerics}
<h2>Tolerance policy</h2><pre>{esc(tolerances.explain(cfg))}</pre>
</body></html>"""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"), overwrite=overwrite)
