"""``lrpath compile --web DIR``: a static page that explains pictures in the browser.

DIR gets the compiled model, onnxruntime-web's WebAssembly build (copied from the npm
package the user has, nothing fetched at run time) and ``index.html``: drop a picture on it
and it preprocesses it the CLI's way (resize, centre crop, scale, mean/std, layout; the
browser's resampling and 8-bit decoding are not Pillow's, so a resized photo's tensor
differs a little), runs the model's forward and relevance pass in one onnxruntime-web
session and draws the heatmap in the CLI's colours. ``?image=NAME`` explains a picture beside the page on load
(a demo, and how the browser test drives it). Browsers load WebAssembly only over HTTP:
``python -m http.server -d DIR``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
from pathlib import Path

from ..errors import InputError
from ..io.images import Preprocess, per_channel

#: what the page needs from onnxruntime-web's ``dist`` folder (single-threaded WebAssembly)
ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
HOW = "npm pack onnxruntime-web (or npm install onnxruntime-web) and pass --ort-web with the .tgz or the package folder"
PAGE = Path(__file__).with_name("web_page.html")
#: the largest compiled model a page takes (one protobuf file, within WebAssembly's 4 GB)
WEB_LIMIT = (2 << 30) - (64 << 20)
#: what a site folder holds (the page, the model, onnxruntime-web)
SITE = ("index.html", "model.lrp.onnx", "ort")


def ort_web_candidates(given: Path | None) -> list[Path]:
    """Where onnxruntime-web may be: ``--ort-web``, ``$LRPATH_ORT_WEB``, ./node_modules, the cache."""
    if given is not None:
        return [given]
    out = [Path(os.environ["LRPATH_ORT_WEB"])] if os.environ.get("LRPATH_ORT_WEB") else []
    out.append(Path("node_modules") / "onnxruntime-web")
    cache = Path(os.environ.get("LRPATH_CACHE", Path.home() / ".cache" / "lrpath-onnx"))
    out += sorted(cache.glob("onnxruntime-web-*.tgz"), key=_version_key, reverse=True)
    return out


def _version_key(path: Path) -> tuple:
    """``onnxruntime-web-1.30.0.tgz`` → (1, 30, 0): the newest first, not the last in text order."""
    found = re.search(r"(\d+(?:\.\d+)*)\.tgz$", path.name)
    return tuple(int(v) for v in found.group(1).split(".")) if found else ()


def copy_ort_web(source: Path | None, dest: Path) -> str:
    """Copy ``ORT_FILES`` from an onnxruntime-web package (folder, its ``dist``, or the npm
    ``.tgz``) into ``dest``; the package's version."""
    for cand in ort_web_candidates(source):
        if cand.is_file() and cand.name.endswith((".tgz", ".tar.gz")):
            try:
                return _from_tarball(cand, dest)
            except InputError:
                if source is not None:
                    raise
                continue  # a broken file found on its own: try the next place
        for dist in (cand / "dist", cand):
            if all((dist / f).is_file() for f in ORT_FILES):
                dest.mkdir(parents=True, exist_ok=True)
                for f in ORT_FILES:
                    shutil.copyfile(dist / f, dest / f)
                return _version(dist.parent / "package.json") or _version(dist / "package.json") or "unknown"
        if source is not None:
            raise InputError(f"--ort-web {source}: no onnxruntime-web dist files there ({', '.join(ORT_FILES)}); {HOW}")
    raise InputError(f"--web needs onnxruntime-web: {HOW}")


def _from_tarball(path: Path, dest: Path) -> str:
    try:
        with tarfile.open(path) as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            missing = [f for f in ORT_FILES if f"package/dist/{f}" not in members]
            if missing:
                raise InputError(f"--ort-web {path}: not an onnxruntime-web package (no {missing[0]}); {HOW}")
            dest.mkdir(parents=True, exist_ok=True)
            for f in ORT_FILES:
                with tar.extractfile(members[f"package/dist/{f}"]) as src, open(dest / f, "wb") as out:
                    shutil.copyfileobj(src, out)
            meta = members.get("package/package.json")
            return json.load(tar.extractfile(meta)).get("version", "unknown") if meta else "unknown"
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise InputError(f"--ort-web {path}: cannot read it as an npm package ({exc})") from None


def _without_target_default(proto, dest: Path) -> None:
    """Save the compiled ``proto`` with ``target`` a plain input: onnxruntime-web refuses to
    feed an input that has a default value (an initializer), so the page always feeds it
    (−1: top-1). The default is taken out for the save only, and put back."""
    import onnx

    from .model import TARGET

    inits = proto.graph.initializer
    at = next(i for i, t in enumerate(inits) if t.name == TARGET)
    default = type(inits[at])()
    default.CopyFrom(inits[at])
    del inits[at]
    try:
        onnx.save_model(proto, str(dest))  # checked when the compiled file was saved; under 2 GB (WEB_LIMIT)
    finally:
        inits.insert(at, default)


def _version(package_json: Path) -> str | None:
    try:
        return json.loads(package_json.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError, AttributeError):
        return None


def page_config(an, pre: Preprocess, labels: list[str] | None, model_file: str) -> dict:
    """What the page needs to know: the model file and its input, the preprocessing, labels."""
    return {  # the model's own output: the explained tensor may be a stripped Softmax's input
        "model": model_file, "input": an.graph.input, "output": an.graph.model_output,
        "size": list(pre.size), "channels": pre.channels, "layout": pre.layout, "resize": pre.resize,
        "fit": pre.fit, "scale": pre.scale, "mean": per_channel(pre.mean, pre.channels, "mean").tolist(),
        "std": per_channel(pre.std, pre.channels, "std").tolist(), "channel_order": pre.channel_order,
        "labels": labels, "preset": an.plan().describe(),
    }


def check_site_folder(dest: Path, out: Path) -> None:
    """``dest`` must be new, empty, or a page this command wrote (it is replaced whole), and
    neither the working folder nor the one ``out`` (the compiled file) is written to."""
    where = dest.resolve()
    if where == Path.cwd().resolve() or where in Path.cwd().resolve().parents:
        raise InputError(f"--web {dest}: give a folder of its own, not the working folder (it is replaced whole)")
    if out.resolve().is_relative_to(where):
        raise InputError(f"--web {dest}: --out {out} lies inside it; write the compiled file elsewhere")
    if dest.exists() and (not dest.is_dir() or any(p.name not in SITE for p in dest.iterdir())):
        raise InputError(f"--web {dest}: give a new or empty folder (it holds other files)")


def write_site(dest: Path, compiled: Path, proto, config: dict, ort_web: Path | None) -> str:
    """Write the page, the model (``proto``, written to ``compiled`` too) and onnxruntime-web
    into ``dest`` (built beside it, then moved in place: an error leaves no half-written
    site); onnxruntime-web's version."""
    check_site_folder(dest, compiled)
    dest = dest.resolve()
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        version = copy_ort_web(ort_web, tmp / "ort")
        _without_target_default(proto, tmp / config["model"])
        # "<" escaped: a label holding "</script>" must not end the script
        html = PAGE.read_text(encoding="utf-8").replace("/*CONFIG*/null", json.dumps(config).replace("<", "\\u003c"))
        (tmp / "index.html").write_text(html, encoding="utf-8")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return version
