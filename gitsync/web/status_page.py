"""The status page at ``/``: every target at a glance, for people.

Server-rendered, no external assets (the page works offline and on a phone),
autoescaped: error messages are shown as text. It shows nothing secret: the
job history holds no token, and remotes are URLs without credentials.
"""

from __future__ import annotations

import time
from typing import Any

from flask import render_template_string

from gitsync.windmill.coverage import Coverage
from gitsync.windmill.version import Versions

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>windmill-git-sync</title>
<style>
 body{font:15px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
 header{background:#1d2330;color:#fff;padding:14px 20px}
 h1{font-size:18px;margin:0} header p{margin:4px 0 0;color:#b9c0cf;font-size:13px}
 main{padding:16px 20px}
 .target{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:12px 14px;margin:0 0 12px}
 .target.bad{border-left:6px solid #d0342c} .target.ok{border-left:6px solid #2d9d5a}
 .target.stale{border-left:6px solid #d89614}
 .ws{font-weight:600;font-size:16px} .remote{color:#556;word-break:break-all;font-size:13px}
 dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:8px 0}
 dt{color:#667} dd{margin:0;word-break:break-word}
 .err{color:#b3261e} code{font-size:13px} ul.held{margin:2px 0;padding-left:18px}
 header p.warn{color:#ffcf7a}
 svg{display:block;max-width:100%} .empty{color:#667}
</style></head><body>
<header><h1>windmill-git-sync</h1>
<p>{{ targets|length }} target{{ '' if targets|length == 1 else 's' }} · {{ now }}</p>
{% if versions %}<p class="versions">Windmill {{ versions.server or 'version unknown' }} · wmill CLI {{ versions.cli }}</p>
{% if versions.warning %}<p class="warn">{{ versions.warning }}</p>{% endif %}{% endif %}</header>
<main>
{% if not targets %}<p class="empty">No sync has run yet.</p>{% endif %}
{% for t in targets %}
<section class="target {{ t.health }}" data-target="{{ t.workspace }}">
 <div class="ws">{{ t.workspace }}</div>
 <div class="remote">{{ t.remote }} · {{ t.branch }}</div>
 <dl>
  <dt>Last success</dt><dd>{{ t.last_success or 'never' }}{% if t.age %} ({{ t.age }} ago){% endif %}</dd>
  <dt>Last commit</dt><dd><code>{{ t.last_commit or '-' }}</code></dd>
  <dt>State</dt><dd>{{ t.state }}</dd>
  {% if t.owed_jobs %}<dt>Owed run</dt><dd class="err">{{ t.owed_jobs }} interrupted sync{{ '' if t.owed_jobs == 1 else 's' }}: the next sync of this target completes {{ 'it' if t.owed_jobs == 1 else 'them' }}</dd>{% endif %}
  {% if t.coverage %}{% if t.coverage.not_backed_up %}<dt>Not backed up</dt><dd class="err not-backed-up">{{ t.coverage.not_backed_up|length }} item{{ '' if t.coverage.not_backed_up|length == 1 else 's' }} Windmill has: {% for g in t.coverage.not_backed_up %}{{ g.kind }} <code>{{ g.path }}</code>{{ ', ' if not loop.last }}{% endfor %} (the pinned wmill CLI does not write {{ 'it' if t.coverage.not_backed_up|length == 1 else 'them' }}: upgrade the image)</dd>
  {% else %}<dt>Coverage</dt><dd>complete: {{ t.coverage.backed_up }} item{{ '' if t.coverage.backed_up == 1 else 's' }}</dd>{% endif %}{% endif %}
  {% if t.last_error %}<dt>Last error</dt><dd class="err">{{ t.last_error }}</dd>{% endif %}
  {% if t.held %}<dt>Held back</dt><dd class="err">{{ t.held|length }} item{{ '' if t.held|length == 1 else 's' }} with possible secrets, not backed up as they are now:<ul class="held">{% for h in t.held %}<li>{{ h.item }} ({{ h.backed_up }}): {% for f in h.findings %}{{ f.file }} line {{ f.line }} ({{ f.detector }}){{ '' if loop.last else ', ' }}{% endfor %}</li>{% endfor %}</ul></dd>{% endif %}
 </dl>
 <svg width="{{ 30 * 9 }}" height="44" role="img" aria-label="last {{ t.recent|length }} syncs">
 {% for bar in t.bars %}<rect x="{{ loop.index0 * 9 }}" y="{{ 44 - bar.h }}" width="7" height="{{ bar.h }}" fill="{{ bar.color }}"><title>{{ bar.title }}</title></rect>{% endfor %}
 </svg>
</section>
{% endfor %}
</main></body></html>
"""

_COLORS = {
    "succeeded": "#2d9d5a",
    "partial": "#d89614",
    "failed": "#d0342c",
    "refused": "#d89614",
    "interrupted": "#8a8f98",
    "running": "#3b6fd4",
    "queued": "#b9c0cf",
}


def render(
    targets: list[dict[str, Any]],
    stale_after: float,
    *,
    coverage: dict[str, Coverage] | None = None,
    versions: Versions | None = None,
) -> str:
    """The page; ``coverage`` is each target's last known one, by target key."""
    now = time.time()
    coverage = coverage or {}
    rows = []
    for t in targets:
        last = t["last_success_at"]
        longest = max((j["seconds"] or 0 for j in t["recent"]), default=0) or 1
        bars = [
            {
                "h": max(4, int(40 * (j["seconds"] or 0) / longest)),
                "color": _COLORS.get(j["state"], "#b9c0cf"),
                "title": f"{j['state']}" + (f", {j['seconds']:.1f} s" if j["seconds"] else ""),
            }
            for j in t["recent"]
        ]
        known = coverage.get(t["target"])
        health = (
            "bad"
            if t["last_error"] or t.get("held")
            else "stale"
            if last is None or now - last > stale_after or (known and known.not_backed_up)
            else "ok"
        )
        rows.append(
            {
                **t,
                "bars": bars,
                "health": health,
                "last_success": _when(last),
                "age": _age(now - last) if last else None,
                "last_commit": (t["last_commit"] or "")[:12] or None,
                "coverage": known,
            }
        )
    return render_template_string(_TEMPLATE, targets=rows, now=_when(now), versions=versions)


def _when(stamp: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(stamp)) if stamp else None


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"
