"""Put onnxruntime-web's browser files into the package, for `char-rnn export --format web`.

    python scripts/vendor_web_runtime.py                 # npm pack the pinned version (needs npm)
    python scripts/vendor_web_runtime.py --from FILE.tgz # or a tarball already on this machine

The version and the tarball's sha512 are pinned in src/char_rnn/web/runtime.json; a tarball
that does not match is refused. The files (about 14 MB, mostly the WebAssembly binary) go to
src/char_rnn/web/runtime/, which git ignores and the sdist and wheel carry as package data,
so that users of `pip install char-rnn` need neither npm nor a network to export a page.
Run it before `python -m build` (scripts/build_release.sh does); a second run with the files
in place does nothing.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

WEB = Path(__file__).resolve().parents[1] / "src" / "char_rnn" / "web"
MANIFEST = WEB / "runtime.json"
RUNTIME = WEB / "runtime"
NOTICE = "NOTICE.txt"


def integrity(path: Path) -> str:
    """npm's integrity string (Subresource Integrity, sha512) of a file."""
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def npm_pack(spec: str, folder: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("vendor_web_runtime: npm is not installed; install Node.js, or pass --from FILE.tgz")
    done = subprocess.run(
        [npm, "pack", spec, "--json", "--pack-destination", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"vendor_web_runtime: npm pack {spec} failed: {done.stderr.strip()[-500:]}")
    return folder / json.loads(done.stdout)[0]["filename"]


def is_current(manifest: dict) -> bool:
    notice = RUNTIME / NOTICE
    return (
        notice.is_file()
        and f"{manifest['package']} {manifest['version']}" in notice.read_text()
        and all((RUNTIME / name).is_file() for name in manifest["files"].values())
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="tarball", type=Path, help="a local onnxruntime-web .tgz")
    parser.add_argument("--force", action="store_true", help="replace files already in place")
    args = parser.parse_args()
    manifest = json.loads(MANIFEST.read_text())
    spec = f"{manifest['package']}@{manifest['version']}"
    if is_current(manifest) and not args.force:
        print(f"{spec} is already in {RUNTIME}")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        tarball = args.tarball or npm_pack(spec, Path(scratch))
        if integrity(tarball) != manifest["integrity"]:
            sys.exit(f"vendor_web_runtime: {tarball} is not {spec} (its sha512 differs from runtime.json)")
        staged = Path(scratch) / "runtime"
        staged.mkdir()
        with tarfile.open(tarball) as archive:
            for member, name in manifest["files"].items():
                source = archive.extractfile(member)
                if source is None:
                    sys.exit(f"vendor_web_runtime: {tarball} has no {member}")
                (staged / name).write_bytes(source.read())
        (staged / NOTICE).write_text(
            f"{manifest['package']} {manifest['version']} ({manifest['license']} license), "
            f"from https://www.npmjs.com/package/{manifest['package']}\n"
            "Renamed: dist/ort-wasm-simd-threaded.mjs -> ort-wasm-simd-threaded.js, so that any static\n"
            "server gives it a JavaScript content type.\n"
        )
        shutil.rmtree(RUNTIME, ignore_errors=True)
        shutil.copytree(staged, RUNTIME)
    size = sum(f.stat().st_size for f in RUNTIME.iterdir())
    print(f"vendored {spec} into {RUNTIME} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
