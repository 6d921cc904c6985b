#!/usr/bin/env bash
# Renders bench's HTML report template with a JSON report the way the Rust side does (the marker
# replaced once, "<" in the JSON escaped), loads the page in headless Chromium from a file://
# URL and checks it: the charts are in the DOM as SVG with lines, no script error was logged.
# Writes NAME.html, NAME.dom.html, NAME.png and NAME.log under $OUT (default /tmp/bench-report).
#
# ESCAPE=u003c (default) escapes every "<" as "\u003c", which is always safe inside a script
# element; ESCAPE=slash escapes only "</" as "<\/", which breaks on "<!--<script" in a string
# (the edge case of --all then fails: the rest of the page becomes script text).
#
#   render.sh                 the sample report next to this script
#   render.sh FILE.json ...   the given reports
#   render.sh --all           the sample plus derived edge cases: one system without acks, empty
#                             histograms / three systems / huge numbers / markup in strings,
#                             a `bench max` report with steps, and an error document
#
# Needs python3 and Chromium (Debian: apt-get install chromium). Exits non-zero if a check fails.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
template=${TEMPLATE:-$here/../../src/report/report.html}
out=${OUT:-/tmp/bench-report}
chromium=${CHROMIUM:-chromium}
mkdir -p "$out"

inputs=("$@")
if [ ${#inputs[@]} -eq 0 ]; then inputs=("$here/sample-report.json"); fi
if [ "${inputs[0]}" = "--all" ]; then
  # Edge cases derived from the sample.
  python3 - "$here/sample-report.json" "$out" <<'EOF'
import copy, json, sys
src, out = sys.argv[1], sys.argv[2]
d = json.load(open(src))
s1, s2 = d["systems"]
empty = {"count": 0, "min": 0, "mean": 0.0, "stdev": 0.0, "p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0, "curve": []}

one = copy.deepcopy(d)                                   # one system, WebSocket, no acks
one["systems"] = [copy.deepcopy(s2)]
one["title"] = "bench run system2"
json.dump(one, open(f"{out}/one-system.json", "w"))

edge = copy.deepcopy(d)                                  # empty histograms, nulls, huge numbers, N = 3
a, b = edge["systems"]
a["latency_us"] = {"corrected": dict(empty), "uncorrected": dict(empty)}
a["ack_latency_us"]["corrected"] = dict(empty)
a["timeline"] = []
a["stopped_early"] = True
a["reasons"]["error"] = "</script><!--<script> & <b>not bold</b>"
b["name"] = "System 2 </script>"
for p in b["timeline"][3:5]:
    p["p99_us"] = None
b["cpu"]["system_s"] = None
b["counts"]["duplicated"] = 5
c = copy.deepcopy(s1)
c["name"], c["label"], c["transport"] = "System 1 (h1)", "system1-h1", "h1"
for blk in (c["latency_us"]["corrected"], c["latency_us"]["uncorrected"]):
    blk["curve"] = [[p, v * 5000] for p, v in blk["curve"]]   # up to 45 s: log latency axis
    for k in ("min", "mean", "stdev", "p50", "p90", "p99", "p999", "max"):
        blk[k] *= 5000
c["throughput"] = {k: v * 125 for k, v in c["throughput"].items()}
c["timeline"] = [{"t": p["t"], "sent": p["sent"] * 125, "seen": p["seen"] * 125, "p99_us": p["p99_us"] * 5000}
                 for p in c["timeline"]]
edge["systems"].append(c)
edge["params"]["nested"] = {"a": 1, "b": [1, 2]}
edge["machine"] = {}
json.dump(edge, open(f"{out}/edge.json", "w"))

mx = copy.deepcopy(d)                                    # bench max: steps, one passing system
mx["title"] = "bench max: the highest passing step of each system"
mx["systems"] = [copy.deepcopy(s1)]
mx["steps"] = [{"system": "System 1", "step": i + 1, "rate_per_s": 20000 * 1.5 ** i, "seen_per_s": 19990 * 1.5 ** i,
                "seen_pct": 99.99, "sent_pct": 99.98, "p99_us": 3000 * 2 ** i, "pass": i < 2} for i in range(3)]
json.dump(mx, open(f"{out}/max.json", "w"))

json.dump({"error": "key must be a string"}, open(f"{out}/error.json", "w"))
EOF
  inputs=("$here/sample-report.json" "$out/one-system.json" "$out/edge.json" "$out/max.json" "$out/error.json")
fi

status=0
for json in "${inputs[@]}"; do
  name=$(basename "$json" .json)
  page=$out/$name.html
  # Substitute as bench/src/report/html.rs does.
  python3 - "$template" "$json" "$page" "${ESCAPE:-u003c}" <<'EOF'
import json, sys
tpl, src, dst, mode = sys.argv[1:]
t = open(tpl, encoding="utf-8").read()
assert t.count("__REPORT_JSON__") == 1, "the marker must appear exactly once"
doc = json.dumps(json.load(open(src, encoding="utf-8")), ensure_ascii=False)
doc = doc.replace("</", "<\\/") if mode == "slash" else doc.replace("<", "\\u003c")
open(dst, "w", encoding="utf-8").write(t.replace("__REPORT_JSON__", doc, 1))
EOF
  flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --enable-logging=stderr --v=0)
  "$chromium" "${flags[@]}" --dump-dom "file://$page" >"$out/$name.dom.html" 2>"$out/$name.log" || true
  "$chromium" "${flags[@]}" --screenshot="$out/$name.png" --window-size=1200,2400 "file://$page" \
    >/dev/null 2>>"$out/$name.log" || true

  # Checks against the DOM dump and the console log.
  if python3 - "$json" "$out/$name.dom.html" "$out/$name.log" <<'EOF'
import json, re, sys
doc = json.load(open(sys.argv[1], encoding="utf-8"))
dom = open(sys.argv[2], encoding="utf-8").read()
log = open(sys.argv[3], encoding="utf-8", errors="replace").read()
systems = doc.get("systems") or []
fails = []

def svg(id_):
    m = re.search(r'<svg[^>]*\bid="%s"[^>]*>(.*?)</svg>' % id_, dom, re.S)
    return m and m.group(1)

def lines(body):
    return len(re.findall(r'<path[^>]*class="series"', body or ""))

has_latency = any((s.get("latency_us") or {}).get("corrected", {}).get("count", 0) > 0 for s in systems)
has_acks = any(s.get("ack_latency_us") for s in systems)
has_timeline = any(s.get("timeline") for s in systems)
if "<svg" in dom and "report-data" not in dom:
    fails.append("page not rendered")
for id_, want in (("latency-chart", has_latency), ("throughput-chart", has_timeline), ("p99-chart", has_timeline)):
    body = svg(id_)
    if body is None:
        fails.append(f"no <svg id={id_}>")
    elif want and not lines(body):
        fails.append(f"{id_} has no lines")
    elif not want and "no data" not in body:
        fails.append(f"{id_} should say no data")
if has_acks and svg("ack-chart") is None:
    fails.append("no <svg id=ack-chart>")
if not has_acks and 'id="ack-chart"' in dom:
    fails.append("ack-chart present without ack data")
if 'id="summary-table"' not in dom or (systems and "<tbody>" not in dom):
    fails.append("summary table empty")
if doc.get("steps") and 'id="steps-table"><thead>' not in dom:
    fails.append("steps table empty")
if "<b>not bold</b>" in dom:
    fails.append("markup from the data was interpreted")
for line in log.splitlines():
    if re.search(r"Uncaught|CONSOLE.*report:|SyntaxError", line):
        fails.append("console: " + line.strip()[:300])
counts = {i: lines(svg(i)) for i in ("latency-chart", "throughput-chart", "p99-chart", "ack-chart")}
print(("FAIL " if fails else "ok   ") + sys.argv[1].split("/")[-1], counts)
for f in fails:
    print("     " + f)
sys.exit(1 if fails else 0)
EOF
  then :; else status=1; fi
  echo "     $out/$name.png  $out/$name.dom.html  $out/$name.log"
done
exit $status
