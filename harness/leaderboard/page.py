"""The leaderboard as one self-contained HTML page (index.html): the same tables as the markdown, with sortable
columns and filters by suite, task, data kind and method; no external script, style or font. Every text is
escaped with html.escape; the notes' inline markdown (**bold**, `code`) becomes <strong> / <code>."""

from __future__ import annotations

import re
from html import escape
from urllib.parse import quote

from harness.leaderboard.board import Board
from harness.leaderboard.frame import Cell, TaskTable
from harness.leaderboard.markdown import KIND_TITLE, MARK_NOTES, MISSING_NOTE, SECTIONS, STALE_NOTE, absent_note
from harness.leaderboard.stats import METHOD_NOTE
from harness.leaderboard.summary import Summary


def _inline(text: str) -> str:
    """A note written for the markdown page, escaped, its **bold** and `code` as HTML."""
    html = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escape(text))
    return re.sub(r"`(.+?)`", r"<code>\1</code>", html)


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:96em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left}
th{background:#f2f2f2;cursor:pointer;user-select:none}th[data-dir=asc]::after{content:" ▲"}
th[data-dir=desc]::after{content:" ▼"}tr:target{background:#ffd}details{font-size:12px}
#filters{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ccc}
.note{color:#555}img{max-width:100%}
"""

SCRIPT = """
function sortKey(td){const t=td.textContent.trim(),v=parseFloat(t.replace(/^[\\[(]/,''));return isNaN(v)?t:v}
function compare(x,y){if(typeof x==='number'&&typeof y==='number')return x-y;
  if(typeof x==='number')return -1;if(typeof y==='number')return 1;return x.localeCompare(y)}
document.querySelectorAll('table.sortable th').forEach(th=>th.addEventListener('click',()=>{
  const table=th.closest('table'),body=table.tBodies[0],asc=th.dataset.dir!=='asc',i=th.cellIndex;
  table.querySelectorAll('th').forEach(h=>delete h.dataset.dir);th.dataset.dir=asc?'asc':'desc';
  [...body.rows].sort((a,b)=>(asc?1:-1)*compare(sortKey(a.cells[i]),sortKey(b.cells[i])))
    .forEach(r=>body.appendChild(r));}));
function applyFilters(){
  const s=document.getElementById('f-suite').value,t=document.getElementById('f-task').value,
    d=document.getElementById('f-data').value,m=document.getElementById('f-method').value.trim();
  document.querySelectorAll('tr[data-data]').forEach(tr=>{
    tr.hidden=!((!s||tr.dataset.suites.split(' ').includes(s))&&(!t||!('task' in tr.dataset)||tr.dataset.task===t)
      &&(!d||tr.dataset.data===d)&&(!m||tr.dataset.method.includes(m)));});
  document.querySelectorAll('section.rows').forEach(sec=>{sec.hidden=!sec.querySelector('tbody tr:not([hidden])')});
}
document.querySelectorAll('#filters select,#filters input').forEach(e=>e.addEventListener('input',applyFilters));
"""


def _attrs(**values: str) -> str:
    return "".join(f' data-{k}="{escape(v)}"' for k, v in values.items())


def _table(headers: list[str], rows: list[str]) -> str:
    head = "".join(f'<th title="sort">{escape(h)}</th>' for h in headers)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _tds(values) -> str:
    return "".join(f"<td>{escape(v)}</td>" for v in values)


def _summary(s: Summary) -> str:
    rows = []
    for name, r in zip(s.names, s.rows):
        tasks = "".join(
            f'<td><a href="#{s.links[(name, t)]}">{escape(r[t])}</a></td>' if (name, t) in s.links else _tds([r[t]])
            for t in s.tasks
        )
        fixed = _tds(r[k] for k in ("#", "method", "mean rank", "Borda"))
        rows.append(f"<tr{_attrs(data=s.data, suites=s.suite, method=name)}>{fixed}{tasks}</tr>")
    headers = ["#", "method", "mean rank", "Borda", *(s.headers[t] for t in s.tasks)]
    absent = f'<p class="note">{_inline(absent_note(s))}</p>' if s.absent else ""
    return (
        f'<section class="rows"{_attrs(data=s.data, suites=s.suite)}><h3>{escape(s.suite)} — '
        f"{escape(KIND_TITLE[s.data])}</h3><p>{escape(s.description)}</p>{_table(headers, rows)}{absent}"
        f"{_notes(s.marks)}<p class=note>{_inline(MISSING_NOTE)}</p></section>"
    )


def _notes(marks: set[str]) -> str:
    return "".join(f'<p class="note">{_inline(note)}</p>' for mark, note in MARK_NOTES.items() if mark in marks)


def _files(c: Cell) -> str:
    links = " ".join(f'<a href="{escape(quote(link))}">seed {seed}</a>' for seed, link in c.files)
    fields = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in c.provenance)
    return f"<td><details><summary>{len(c.files)} file(s)</summary>{links}<dl>{fields}</dl></details></td>"


def _task(t: TaskTable, suites: str, plot: str | None) -> str:
    rows = [
        f'<tr id="{c.id}"{_attrs(data=t.data, task=t.task, suites=suites, method=c.name)}>{_tds(r.values())}'
        f"{_files(c)}</tr>"
        for r, c in zip(t.rows(), t.cells)
    ]
    headers = [*t.rows()[0], "files"]
    compared = "".join(f"<li>{_inline(cmp.text())}</li>" for cmp in t.comparisons)
    compared = f"<p>Paired comparisons on {escape(t.metrics[0])}:</p><ul>{compared}</ul>" if compared else ""
    marks = {m for c in t.cells for m in MARK_NOTES if m in c.method}
    notes = _notes(marks) + (f'<p class="note">{_inline(STALE_NOTE)}</p>' if t.with_spec else "")
    image = f'<img alt="{escape(t.task)} bars" src="plots/{escape(quote(plot))}">' if plot else ""
    return (
        f'<section class="rows"{_attrs(data=t.data, task=t.task, suites=suites)}>'
        f"<h3>{escape(t.task)} (v{t.version})</h3>{_table(headers, rows)}{compared}{notes}{image}</section>"
    )


def _failures(board: Board, suites: dict[str, str]) -> str:
    if not board.failures:
        return "<h2>Failures</h2><p>None.</p>"
    rows = []
    for f in board.failures:
        values = _tds(f[k] for k in ("data", "task", "method", "ref", "seed", "status", "reason"))
        link = f'<td><a href="{escape(quote(f["file"]))}">seed {escape(f["seed"])}</a></td>'
        name = f["method"].split(" ")[0]
        rows.append(
            f"<tr{_attrs(data=f['data'], task=f['task'], suites=suites.get(f['task'], ''), method=name)}>"
            f"{values}{link}</tr>"
        )
    headers = ["data", "task", "method", "ref", "seed", "status", "reason", "file"]
    return f'<section class="rows"><h2>Failures</h2>{_table(headers, rows)}</section>'


def _select(name: str, label: str, options: list[str]) -> str:
    opts = "".join(f'<option value="{escape(o)}">{escape(o)}</option>' for o in options)
    return f'<label>{label} <select id="f-{name}"><option value="">all</option>{opts}</select></label> '


def render(board: Board, plots: list[str]) -> str:
    """The page; `plots`: the PNG names written under plots/ (shown with their task)."""
    suites = {t: " ".join(names) for t, names in board.suites.items()}
    intro = (
        "Generated by bench leaderboard from the result files, with README.md (the same numbers, as markdown) and "
        "plots/ beside it. Every number was computed by the harness's own evaluators from the method's raw outputs. "
        "Click a column header to sort by it; the filters hide the rows they do not match."
    )
    body = [
        f"<h1>Leaderboard</h1><p>{_inline(intro)}</p>",
        '<div id="filters">',
        _select("suite", "suite", sorted({s for names in board.suites.values() for s in names})),
        _select("task", "task", sorted({t.task for t in board.tables})),
        _select("data", "data", ["real", "procedural"]),
        '<label>method <input id="f-method" placeholder="contains"></label></div>',
        "<h2>Summary</h2>",
        *(_summary(s) for s in board.summaries),
    ]
    if not board.summaries:
        body.append("<p>No suite has results yet: run <code>make bench</code>.</p>")
    for kind, title in SECTIONS.items():
        head, _, rest = title.partition("\n\n")
        body.append(
            f"<h2>{escape(head.lstrip('# '))}</h2>" + (f"<p>{_inline(' '.join(rest.split()))}</p>" if rest else "")
        )
        tables = [t for t in board.tables if t.data == kind]
        for t in tables:
            name = f"{t.data}-{t.task}-v{t.version}.png"
            body.append(_task(t, suites.get(t.task, ""), name if name in plots else None))
        if not tables:
            body.append("<p>No results yet.</p>")
    body.append(_failures(board, suites))
    extra = [p for p in plots if p.endswith(("-memory.png", "-ranks.png"))]
    body.append("<h2>Plots</h2>" + "".join(f'<img alt="{escape(p)}" src="plots/{escape(quote(p))}">' for p in extra))
    body.append(f"<h2>How to read this page</h2><p>{_inline(METHOD_NOTE)}</p>")
    body.append(f'<p class="note">result files: {len(board.records)}</p>')
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>vrbench leaderboard</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}<script>{SCRIPT}</script></body></html>\n"
    )
