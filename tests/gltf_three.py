"""A .glb through three.js's GLTFLoader in a real headless browser (Debian's chromium, SwiftShader WebGL):
serves tools/gltf/three_check.html, three from tools/gltf/node_modules and the file on a loopback port,
and reads back what the page found (skinned meshes, bones, the clip, a joint's position at rest and 0.5 s
into the clip). Used by tests/test_gltf_three.py; also makes the docs' screenshot:

    .venv/bin/python -m tests.gltf_three FILE.glb --screenshot docs/images/three_gltf.png
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools" / "gltf"
THREE = TOOLS / "node_modules" / "three"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                  "--disable-gpu-sandbox", "--hide-scrollbars", "--virtual-time-budget=60000")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing() -> str | None:
    """Why the check cannot run here, or None."""
    if chromium() is None:
        return "no chromium (apt-get install chromium)"
    if not (THREE / "build" / "three.module.js").is_file():
        return "three is not installed: (cd tools/gltf && npm ci), or scripts/setup_env.sh"
    return None


class _Handler(http.server.SimpleHTTPRequestHandler):
    glb: Path

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0]
        if path == "/model.glb":
            return str(self.glb)
        if path.startswith("/three/"):
            return str(THREE / path[len("/three/"):])
        return str(TOOLS / "three_check.html")

    def log_message(self, *args) -> None:  # quiet
        pass


def run(glb: Path, screenshot: Path | None = None, size: tuple[int, int] = (640, 480), timeout: float = 300.0) -> dict:
    """The page's JSON report on `glb` (and a PNG screenshot when asked)."""
    handler = type("Handler", (_Handler,), {"glb": Path(glb).resolve()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(TOOLS)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html?w={size[0]}&h={size[1]}"
    try:
        with tempfile.TemporaryDirectory(prefix="genlca-chromium-") as profile:
            base = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"]
            dom = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=timeout)
            if screenshot is not None:
                subprocess.run(base + [f"--screenshot={Path(screenshot).resolve()}", url], capture_output=True,
                               text=True, timeout=timeout, check=True)
    finally:
        server.shutdown()
    text = dom.stdout
    start = text.find('<pre id="result">')
    if start < 0:
        raise RuntimeError(f"chromium returned no page (exit {dom.returncode}): {dom.stderr[-2000:]}")
    body = text[start + len('<pre id="result">'):text.find("</pre>", start)]
    try:
        return json.loads(body.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    except json.JSONDecodeError:
        raise RuntimeError(f"the page did not finish: {body[:500]!r}; chromium: {dom.stderr[-1500:]}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("glb", type=Path)
    ap.add_argument("--screenshot", type=Path)
    args = ap.parse_args()
    reason = missing()
    if reason:
        raise SystemExit(reason)
    print(json.dumps(run(args.glb, args.screenshot), indent=1))


if __name__ == "__main__":
    main()
