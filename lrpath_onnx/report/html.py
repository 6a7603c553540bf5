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
tr.chosen td{background:#fff3d6;font-weight:600}
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


def _pct(path: dict | None) -> str:
    share = path.get("carried_share") if path else None
    return "—" if share is None else f"{100 * share:.3g} %"


def _ranked_by(paths: dict) -> str:
    if paths.get("path_score") == "carried":
        return "ranked by the relevance that follows them, each neuron splitting its relevance in proportion to its edges"
    return "ranked by the sum of their flows, as in the paper"


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
    cols = [("share", "layer relevance on the paths", "{:.1%}"), ("heatmap_spearman", "heatmap rank correlation", "{:.3f}"),
            ("heatmap_mse", "heatmap MSE", "{:.3g}"), ("one_layer_output_change", "output change, one layer masked", "{:.1%}"),
            ("all_layers_output_change", "output change, all layers masked", "{:.1%}")]
    cols = [c for c in cols if c[0] in pk]
    opt_head = "".join(f"<th>{_e(title)}</th>" for _, title, _ in cols)
    opt_rows = "".join(f"<tr{' class=chosen' if kk == chosen else ''}><td class=num>{kk}</td>"
                       + "".join(f"<td class=num>{fmt.format(pk[key][kk - 1])}</td>" for key, _, fmt in cols)
                       + "</tr>" for kk in opt["k"])
    best_txt = (" → ".join(f"{_e(n['layer'])}:{n['neuron']}" for n in best["neurons"]) if best else "none")
    share = paths.get("relevance_share_k_paths")
    deconv = ""
    if cs["deconv"]:
        deconv = ("<section><h2>7. What the path neurons see</h2>" + _fig(
            out / "deconv_grid.png", "Deconvolution (Zeiler–Fergus, switch unpooling) of the convolution neurons on the "
            f"{k} best paths, deepest layers first, every layer on the paths represented: each from its strongest "
            "activation for this input (layer, channel, (y, x) in the layer's map), cut to the neuron's receptive field "
            "(the input pixels it can see, from the network's kernels, strides and pads) beside that patch of the "
            "input, normalised per picture around grey.", "wide") + "</section>")
    return f"""
<section><h2>4. Neuron graph and the {k} best paths</h2>
{_fig(out / 'paths' / 'graph.png', f"The {paths['per_layer'] or ''} most relevant neurons (channels) of every layer, edges weighted by the "
      f"relevance that flows between them; the {k} best paths in red ({_ranked_by(paths)}), the best one thickest.", 'wide')}
<div class=kv><div>graph</div><div>{paths['graph']['nodes']} neurons, {paths['graph']['edges']} edges</div>
<div>best path</div><div>{best_txt} (flow {_fmt(best['weight'] if best else None)}; carries {_pct(best)} of the target's relevance)</div></div>
</section>

<section><h2>5. Heatmaps from the {k} best paths only</h2><div class=row>
{_fig(out / 'paths' / 'heatmap_full.png', 'All relevance (for reference).', pixel)}
{_fig(out / 'paths' / 'heatmap_k_paths_relevance.png', f'Relevance-based, layer-wise: at each graph layer the relevance of the '
      f'{k} paths’ neurons alone, propagated down to the input, averaged over the layers'
      + (f' ({100 * share:.2g} % of the total relevance), on the full heatmap’s scale.' if share is not None else '.'), pixel)}
{_fig(out / 'paths' / 'heatmap_k_paths_activation.png', 'Activation-based: the activations of the path neurons, brought back to '
      'input size, over the input.', pixel)}
</div>
{_fig(out / 'paths' / 'heatmap_k_paths_layers.png', 'Per graph layer: what the path neurons of that layer carry down to the '
      'input, each map on its own scale; the percentage is the share of the layer’s relevance on them.', 'wide')}
</section>

<section><h2>6. How many paths suffice</h2><div class=row>
{_fig(out / 'optimize_k.png', 'What the K best paths preserve: the share of each layer’s relevance on their neurons, the '
      'rank correlation of the layer-wise K-path heatmap with the full one, and how much of the explained output is kept '
      'when only their neurons are kept at one graph layer (each in turn) or at every graph layer at once.'
      + (f" Chosen K = {chosen} by {_e(opt['criterion'])} ({_e(opt['criterion_meaning'])}): the smallest within "
         f"{opt['tolerance']:.0%} of the sweep's best" + (', and still improving at the largest K tried.'
                                                         if opt.get('still_improving') else '.')
         if chosen else ' No K was within tolerance.'), 'wide')}
</div><table><tr><th>K</th>{opt_head}</tr>{opt_rows}</table></section>
{deconv}"""


def _absorbed(cs: dict) -> str:
    """What takes the relevance that does not reach the pixels, under the applied preset."""
    if cs.get("preset_applied") in ("attnlrp", "cp-lrp"):
        return "biases, the class token and the softmax rule’s dropped terms"
    return "biases and ε"


def _output_note(cs: dict) -> str:
    """Which output of a model with several is explained (``--model-output``); nothing for one."""
    outputs = cs.get("model_outputs") or []
    if len(outputs) < 2:
        return ""
    return f" · output <code>{_e(cs['model_output'])}</code> of {len(outputs)}"


def _stage_name(key: str, cs: dict) -> str:
    """The timing table's words for a ``timings_s`` key."""
    words = {"explain": "explain (LRP)", "faithfulness": "faithfulness (region perturbation)",
             "paths": "neuron graph, K paths, K-path heatmaps",
             "sweep": f"how many paths suffice (K = 1…{cs.get('k_max')}, {len(cs.get('thresholds', ()))} thresholds)",
             "deconvolution": f"deconvolution ({len(cs.get('deconv') or ())} path neurons)"}
    return words.get(key, key)


def _model_name(cs: dict) -> str:
    return cs.get("model_name") or Path(cs["model"]).name or cs["model"]


def _class_name(t: dict) -> str:
    return _e(t["label"] if t["label"] not in (None, str(t["index"])) else f"class {t['index']}")


def _prediction(cs: dict) -> tuple[str, str, str]:
    """(top-5 table rows, its caption, the page heading): classes, or for a model that ends in
    a feature map (a backbone) its strongest output neurons."""
    top = cs["top5"]
    pred = top[0]
    if "neuron" in pred:
        cols = [("output index", lambda t: t["index"], True), ("neuron", lambda t: f"<code>{_e(t['neuron'])}</code>", False),
                ("activation", lambda t: f"{t['value']:.3f}", True)]
        caption = (f"The model ends in a feature map: its {len(top)} strongest output neurons (layer:channel@(y, x)). "
                   f"Relevance below explains the strongest, {_e(pred['neuron'])}.")
        heading = f"What makes {_e(_model_name(cs))} fire {_e(cs['target'].get('neuron', pred['neuron']))}"
    else:
        cols = [("class", lambda t: t["index"], True), ("name", _class_name, False),
                ("probability", lambda t: f"{t['probability']:.2%}", True), ("logit", lambda t: f"{t['logit']:.3f}", True)]
        caption = (f"Top-{len(top)} classes (softmax of the logits). Relevance below explains the top class, "
                   f"{_class_name(pred)}.")
        heading = f"Why {_e(_model_name(cs))} says “{_class_name(pred)}”"
    rows = "<tr>" + "".join(f"<th>{title}</th>" for title, _, _ in cols) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td{' class=num' if num else ''}>{cell(t)}</td>" for _, cell, num in cols) + "</tr>"
        for t in top)
    return rows, caption, heading


def render(cs: dict, out: Path) -> str:
    """The page for a ``case_study`` result whose pictures are under ``out``."""
    top_table, top_caption, heading = _prediction(cs)
    neurons = "neuron" in cs["top5"][0]
    pixel = "pixel" if cs["input_shape"][-1] < 64 or cs["input_shape"][2] < 64 else ""
    timing_rows = "".join(f"<tr><td>{_e(_stage_name(s, cs))}</td><td class=num>{v:.2f} s</td></tr>"
                          for s, v in cs["timings_s"].items())
    cons = cs["conservation"]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = f"""
<main>
<h1>{heading}</h1>
<p class=sub>Input <code>{_e(Path(cs['input']).name)}</code>{_output_note(cs)} · {stamp} · LRP preset <code>{_e(cs['preset'])}</code>{(' → <code>' + _e(cs['preset_applied']) + '</code>') if cs.get('preset_applied', cs['preset']) != cs['preset'] else ''}
· relevance on <b>{_e(cs['device'])}</b>, forward by <b>{_e(cs['provider'])}</b></p>

<section><h2>1. Input and prediction</h2><div class=row>
{_fig(out / 'input.png', 'The input as the model sees it (after resize, crop and channel order).', pixel)}
<figure><table>{top_table}</table>
<figcaption>{top_caption}</figcaption></figure>
</div></section>

<section><h2>2. Layer-wise relevance propagation</h2><div class=row>
{_fig(out / 'heatmap.png', 'Relevance per pixel, summed over channels: red supports the ' + ('neuron' if neurons else 'class')
      + ', blue speaks against it.', pixel)}
{_fig(out / 'overlay.png', 'The same relevance over a grey copy of the input.', pixel)}
{_fig(out / 'tokens.png', 'Relevance per patch token (at the patch embedding, features summed): what attention '
      'works on. Blank patches hold relevance too (their tokens are the embedding’s bias); it reaches no pixel.')
 if cs.get('tokens') else ''}
</div>
<div class=kv><div>conservation</div><div>input relevance {_fmt(cons['input_relevance'])} of output relevance {_fmt(cons['output_relevance'])}
(ratio {_fmt(cons['ratio'])}; what is missing was absorbed by {_absorbed(cs)})</div>
<div>rule plan</div><div><details><summary>{len([p for p in cs['rules'] if p.get('kind') == 'linear'])} layers with a rule,
preset {_e(cs['preset'])}{(' + ' + _e(', '.join(cs['rule_overrides']))) if cs['rule_overrides'] else ''}</summary>{_plan_table(cs['rules'])}</details></div></div>
</section>

{_faithfulness_section(cs, out)}
{_path_sections(cs, out, pixel)}
<section><h2>{8 if cs['deconv'] else 7 if cs['paths'] else 5}. Run</h2><div class=row><figure><table>{timing_rows}</table>
<figcaption>Seconds per stage on this machine ({_e(cs['machine']['cpu'])}, Python {_e(cs['machine']['python'])}).</figcaption></figure>
<div class=kv style="flex:1 1 300px"><div>model</div><div><code>{_e(cs['model'])}</code></div>
<div>input tensor</div><div>{_e(cs['input_shape'])} ({_e(cs['layout'])})</div>
<div>relevance device</div><div>{_e(cs['device'])}</div><div>forward by</div><div>{_e(cs['provider'])}</div>
<div>neurons per layer</div><div>{cs['per_layer']}</div></div></div></section>
</main>"""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>lrpath report: {_e(Path(cs['input']).name)}</title><style>{CSS}</style>"
            f"<script>{SCRIPT}</script></head><body>{body}</body></html>\n")
