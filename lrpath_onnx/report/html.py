"""The case study as one self-contained HTML page: pictures embedded as data URIs, CSS inline,
no network. A few lines of inline script mark any picture that fails to decode (and count
them on ``<body data-broken-images>``), so a broken page says so instead of looking empty."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;background:#f6f7f9;margin:0}
main{max-width:1120px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:36px 0 8px;border-bottom:1px solid #d9dde3;padding-bottom:4px}
.sub{color:#5a6272;margin:0 0 16px}
section{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:4px 20px 18px;margin:18px 0}
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
figure{margin:8px 0;flex:1 1 240px;min-width:220px}
figure.wide{flex-basis:100%}
figure img{width:100%;height:auto;border:1px solid #e1e4ea;border-radius:4px;background:#fff;image-rendering:auto}
figure.pixel img{image-rendering:pixelated}
figcaption{font-size:13px;color:#4a5263;margin-top:4px}
table{border-collapse:collapse;font-size:14px;margin:8px 0}
td,th{padding:3px 10px;border-bottom:1px solid #eceef2;text-align:left}th{color:#5a6272;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.kv{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;font-size:14px}
.kv div:nth-child(odd){color:#5a6272}
.broken{outline:3px solid #c62828}
.warn{background:#fdecea;border:1px solid #f5c2c0;padding:8px 12px;border-radius:6px}
details summary{cursor:pointer;color:#2b5fb3}
code{font-size:13px;background:#f0f2f5;padding:1px 4px;border-radius:3px}
"""

SCRIPT = """
window.addEventListener('load',function(){var imgs=document.images,bad=0;
for(var i=0;i < imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth===0){bad++;imgs[i].classList.add('broken');}}
document.body.setAttribute('data-images-total',imgs.length);document.body.setAttribute('data-broken-images',bad);
if(bad){var p=document.createElement('p');p.className='warn';p.textContent=bad+' picture(s) failed to load.';
document.querySelector('main').prepend(p);}});
"""


def _e(v) -> str:
    return html.escape(str(v), quote=True)


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _fig(path: Path, caption: str, cls: str = "", alt: str = "") -> str:
    return (f'<figure class="{cls}"><img src="{_img(path)}" alt="{_e(alt or caption)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _fmt(v, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}g}"


def _rule(p: dict) -> str:
    params = ", ".join(f"{k}={v:g}" for k, v in (p.get("params") or {}).items())
    return f"{p['rule']}({params})" if params else p["rule"]


def _plan_table(plan: list[dict]) -> str:
    rows = "".join(f"<tr><td class=num>{p['index']}</td><td>{_e(p['name'])}</td><td>{_e(p['op'])}</td>"
                   f"<td>{_e(_rule(p))}</td><td>{_e(p['source'])}</td></tr>"
                   for p in plan if p.get("kind") == "linear")
    return ("<table><tr><th>#</th><th>layer</th><th>op</th><th>rule</th><th>from</th></tr>" + rows + "</table>")


def _faithfulness_section(cs: dict, out: Path) -> str:
    """Section 3: region perturbation of this image under the heatmap, gradient × input and random."""
    f = cs.get("faithfulness")
    if not f:
        return ""
    rows = "".join(f"<tr><td>{_e(m['name'])}</td><td class=num>{m['morf_aopc']:.3f}</td>"
                   f"<td class=num>{m['lerf_aopc']:.3f}</td><td class=num>{m['abpc']:.3f}</td></tr>" for m in f["methods"])
    return f"""
<section><h2>3. How faithful is this heatmap</h2>
{_fig(out / 'faithfulness.png', f"Region perturbation of this image: its {f['patch']}-pixel patches replaced by a "
      f"{_e(f['baseline'])} of the image in the order each map ranks them, most relevant first (MoRF, left: the faster the "
      "explained logit falls, the better) or least relevant first (LeRF, right: the longer it holds, the better).", 'wide')}
<figure><table><tr><th>map</th><th>MoRF AOPC ↑</th><th>LeRF AOPC ↓</th><th>ABPC ↑</th></tr>{rows}</table>
<figcaption>AOPC: mean drop of the normalised logit over {f['steps']} steps; ABPC = MoRF AOPC − LeRF AOPC.
A heatmap that ranks regions no better than the random one does not explain this decision.</figcaption></figure>
</section>"""


def _path_sections(cs: dict, out: Path, pixel: str) -> str:
    """Sections 4–7: the neuron graph, K-path heatmaps, the sweep, the deconvolution."""
    if cs["paths"] is None:
        return ("<section><h2>4. Neuron paths</h2><p class=warn>Not drawn for this model: "
                f"{_e(cs['no_paths'])}. The LRP heatmap above is complete.</p></section>")
    paths, opt, k = cs["paths"], cs["optimize"], cs["k"]
    best = paths["paths"][0] if paths["paths"] else None
    chosen = opt["chosen_k"]
    pk = opt["per_k"]
    opt_rows = "".join(f"<tr><td class=num>{kk}</td><td class=num>{pk['prob_mse'][kk - 1]:.3g}</td>"
                       f"<td class=num>{pk['prob_smape'][kk - 1]:.1f}</td><td class=num>{pk['heatmap_mse'][kk - 1]:.3g}</td>"
                       f"<td>{'yes' if pk['same_class'][kk - 1] else 'no'}</td></tr>" for kk in opt["k"])
    best_txt = (" → ".join(f"{_e(n['layer'])}:{n['neuron']}" for n in best["neurons"]) if best else "none")
    share = paths.get("relevance_share_k_paths")
    deconv = ""
    if cs["deconv"]:
        deconv = ("<section><h2>7. What the path neurons see</h2>" + _fig(
            out / "deconv_grid.png", "Deconvolution (Zeiler–Fergus, switch unpooling) of the convolution neurons on the "
            f"{k} best paths, each from its strongest activation for this input, normalised per picture around grey. "
            "Each label gives the layer, the channel and where its strongest activation is (y, x).", "wide") + "</section>")
    return f"""
<section><h2>4. Neuron graph and the {k} best paths</h2>
{_fig(out / 'paths' / 'graph.png', f"The {paths['per_layer'] or ''} most relevant neurons (channels) of every layer, edges weighted by the "
      f"relevance that flows between them; the {k} paths carrying the most relevance in red, the best one thickest.", 'wide')}
<div class=kv><div>graph</div><div>{paths['graph']['nodes']} neurons, {paths['graph']['edges']} edges</div>
<div>best path</div><div>{best_txt} (flow {_fmt(best['weight'] if best else None)})</div></div>
</section>

<section><h2>5. Heatmaps from the {k} best paths only</h2><div class=row>
{_fig(out / 'paths' / 'heatmap_full.png', 'All relevance (for reference).', pixel)}
{_fig(out / 'paths' / 'heatmap_k_paths_relevance.png', f'Relevance-based: relevance propagated through the neurons on the {k} paths only'
      + (f' ({100 * share:.2g} % of the total relevance).' if share is not None else '.'), pixel)}
{_fig(out / 'paths' / 'heatmap_k_paths_activation.png', f'Activation-based: the activations of the path neurons, brought back to '
      'input size, over the input.', pixel)}
</div></section>

<section><h2>6. How many paths suffice</h2><div class=row>
{_fig(out / 'optimize_k.png', 'Keeping only the neurons on the K best paths: the model output (softmax MSE and SMAPE against the '
      'full model) and the K-path heatmap (MSE against the full heatmap).' + (f' Chosen K = {chosen}: the smallest within '
      f"{opt['tolerance']:.0%} of the largest error." if chosen else ' No K was within tolerance.'), 'wide')}
</div><details><summary>values per K</summary><table><tr><th>K</th><th>softmax MSE</th><th>softmax SMAPE %</th>
<th>heatmap MSE</th><th>same class</th></tr>{opt_rows}</table></details></section>
{deconv}"""


def _stage_name(key: str, cs: dict) -> str:
    """The timing table's words for a ``timings_s`` key."""
    words = {"explain": "explain (LRP)", "faithfulness": "faithfulness (region perturbation)",
             "paths": "neuron graph, K paths, K-path heatmaps",
             "sweep": f"MSE/SMAPE sweep (K = 1…{cs.get('k_max')}, {len(cs.get('thresholds', ()))} thresholds)",
             "deconvolution": f"deconvolution ({len(cs.get('deconv') or ())} path neurons)"}
    return words.get(key, key)


def render(cs: dict, out: Path) -> str:
    """The page for a ``case_study`` result whose pictures are under ``out``."""
    top = cs["top5"]
    name = lambda t: _e(t["label"] if t["label"] not in (None, str(t["index"])) else f"class {t['index']}")  # noqa: E731
    pred = top[0]
    pixel = "pixel" if cs["input_shape"][-1] < 64 or cs["input_shape"][2] < 64 else ""
    top_rows = "".join(f"<tr><td class=num>{t['index']}</td><td>{name(t)}</td><td class=num>{t['probability']:.2%}</td>"
                       f"<td class=num>{t['logit']:.3f}</td></tr>" for t in top)
    timing_rows = "".join(f"<tr><td>{_e(_stage_name(s, cs))}</td><td class=num>{v:.2f} s</td></tr>"
                          for s, v in cs["timings_s"].items())
    cons = cs["conservation"]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = f"""
<main>
<h1>Why {_e(cs.get('model_name') or Path(cs['model']).name or cs['model'])} says “{name(pred)}”</h1>
<p class=sub>Input <code>{_e(Path(cs['input']).name)}</code> · {stamp} · LRP preset <code>{_e(cs['preset'])}</code>{(' → <code>' + _e(cs['preset_applied']) + '</code>') if cs.get('preset_applied', cs['preset']) != cs['preset'] else ''}
· relevance on <b>{_e(cs['device'])}</b>, forward on onnxruntime's <b>{_e(cs['provider'])}</b></p>

<section><h2>1. Input and prediction</h2><div class=row>
{_fig(out / 'input.png', 'The input as the model sees it (after resize, crop and channel order).', pixel)}
<figure><table><tr><th>class</th><th>name</th><th>probability</th><th>logit</th></tr>{top_rows}</table>
<figcaption>Top-{len(top)} classes (softmax of the logits). Relevance below explains the top class, {name(pred)}.</figcaption></figure>
</div></section>

<section><h2>2. Layer-wise relevance propagation</h2><div class=row>
{_fig(out / 'heatmap.png', 'Relevance per pixel, summed over channels: red supports the class, blue speaks against it.', pixel)}
{_fig(out / 'overlay.png', 'The same relevance over a grey copy of the input.', pixel)}
</div>
<div class=kv><div>conservation</div><div>input relevance {_fmt(cons['input_relevance'])} of output relevance {_fmt(cons['output_relevance'])}
(ratio {_fmt(cons['ratio'])}; what is missing was absorbed by biases and ε)</div>
<div>rule plan</div><div><details><summary>{len([p for p in cs['rules'] if p.get('kind') == 'linear'])} layers with a rule,
preset {_e(cs['preset'])}{(' + ' + _e(', '.join(cs['rule_overrides']))) if cs['rule_overrides'] else ''}</summary>{_plan_table(cs['rules'])}</details></div></div>
</section>

{_faithfulness_section(cs, out)}
{_path_sections(cs, out, pixel)}
<section><h2>{8 if cs['deconv'] else 7 if cs['paths'] else 5}. Run</h2><div class=row><figure><table>{timing_rows}</table>
<figcaption>Seconds per stage on this machine ({_e(cs['machine']['cpu'])}, Python {_e(cs['machine']['python'])}).</figcaption></figure>
<div class=kv style="flex:1 1 300px"><div>model</div><div><code>{_e(cs['model'])}</code></div>
<div>input tensor</div><div>{_e(cs['input_shape'])} ({_e(cs['layout'])})</div>
<div>relevance device</div><div>{_e(cs['device'])}</div><div>onnxruntime provider</div><div>{_e(cs['provider'])}</div>
<div>neurons per layer</div><div>{cs['per_layer']}</div></div></div></section>
</main>"""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>lrpath report: {_e(Path(cs['input']).name)}</title><style>{CSS}</style>"
            f"<script>{SCRIPT}</script></head><body>{body}</body></html>\n")
